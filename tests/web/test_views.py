"""Every view of the page, checked by axe-core (accessibility rules, in light and dark) and photographed in light,
dark and at a phone's 375 px width into test-artifacts/ (to be looked at: tests cannot judge a layout).

The views are reached the way a person reaches them: picking files, sending, opening the link, accepting,
declining, and opening a damaged link.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, ViewportSize

from tests.web.driver import open_offer, start_sending, wait_state

AXE = Path(__file__).resolve().parents[2] / "clients" / "web" / "node_modules" / "axe-core" / "axe.min.js"
RUN_AXE = """() => axe.run(document, { resultTypes: ["violations"] }).then((result) => result.violations.map(
    (v) => ({ id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) })))"""
PHONE: ViewportSize = {"width": 375, "height": 812}
DESKTOP: ViewportSize = {"width": 1000, "height": 800}


def check_view(page: Page, name: str, artifacts: Path) -> None:
    """axe-core finds nothing in light or dark; screenshots in light, dark, and light and dark at 375 px."""
    assert AXE.is_file(), "run: npm --prefix clients/web ci (axe-core is a dev dependency)"
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))  # through DevTools: the page's CSP does not apply
    page.mouse.move(0, 0)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        violations = page.evaluate(RUN_AXE)
        assert violations == [], f"{name} ({scheme}): {violations}"
        for size, label in ((DESKTOP, ""), (PHONE, "-375px")):
            page.set_viewport_size(size)
            page.screenshot(path=str(artifacts / f"{name}-{scheme}{label}.png"), full_page=True)
        page.set_viewport_size(DESKTOP)
    page.emulate_media(color_scheme="light")


@pytest.fixture
def two_pages(context: BrowserContext) -> tuple[Page, Page]:
    sender, receiver = context.new_page(), context.new_page()
    for page in (sender, receiver):
        page.set_viewport_size(DESKTOP)
    return sender, receiver


def test_every_view_passes_axe_and_is_photographed(two_pages: tuple[Page, Page], relay_server, files, artifacts):
    sender, receiver = two_pages
    sender.goto(relay_server.http_url + "/")
    check_view(sender, "01-send-start", artifacts)
    sender.click("#text-pick summary")
    check_view(sender, "01b-send-text", artifacts)
    sender.click("#text-pick summary")
    sender.set_input_files("#file-input", [str(files["big"]), str(files["note"]), str(files["empty"])])
    check_view(sender, "02-send-selected", artifacts)

    sender.click("#send-start")
    sender.wait_for_selector('#send-status[data-state="waiting"]')
    code = sender.text_content("#send-code") or ""
    check_view(sender, "03-send-waiting", artifacts)

    receiver.goto(relay_server.http_url + "/#receive")
    check_view(receiver, "04-receive-start", artifacts)
    open_offer(receiver, relay_server.http_url, code)
    receiver.check("#save-downloads")
    check_view(receiver, "05-receive-offer", artifacts)
    receiver.click("#receive-accept")
    wait_state(receiver, "#receive-status", "verified")
    wait_state(sender, "#send-status", "verified")
    check_view(receiver, "06-receive-done", artifacts)
    check_view(sender, "07-send-done", artifacts)

    code = start_sending(sender, relay_server.http_url, [files["note"]])
    open_offer(receiver, relay_server.http_url, code)
    receiver.click("#receive-decline")
    wait_state(sender, "#send-status", "cancelled")
    check_view(sender, "08-send-declined", artifacts)
    check_view(receiver, "09-receive-declined", artifacts)

    receiver.goto(relay_server.http_url + "/#receive=%E0%A4%A")
    check_view(receiver, "10-receive-damaged-link", artifacts)
