"""Browser fixtures: Debian's Chromium driven by Playwright, against the real relay of tests/conftest.py.

Chromium missing is a failure, not a skip: these tests are how we know the web client works.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is required for the browser tests and was not found at {CHROMIUM} "
                    "(apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        yield browser
        browser.close()


def _context(browser: Browser, **options: object) -> Iterator[BrowserContext]:
    context = browser.new_context(accept_downloads=True, **options)
    context.set_default_timeout(20_000)
    yield context
    context.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile; its pages may use the service worker for streamed downloads."""
    yield from _context(browser)


@pytest.fixture
def no_sw_context(browser: Browser) -> Iterator[BrowserContext]:
    """A profile where service workers are blocked, as in browsers without them: the in-memory fallback."""
    yield from _context(browser, service_workers="block")


@pytest.fixture
def pages(context: BrowserContext) -> Iterator[tuple[Page, Page]]:
    """A sending page and a receiving page; page errors fail the test."""
    errors: list[str] = []
    made = []
    for _ in range(2):
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        made.append(page)
    yield made[0], made[1]
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A multi-MiB random file (not a multiple of the chunk size), a small text file and an empty file."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024 + 12345))
    note = tmp_path / "note.txt"
    note.write_text("second file, with ünïcödé\n", encoding="utf-8")
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    return {"big": big, "note": note, "empty": empty}


@pytest.fixture
def in_thread() -> Iterator[Callable[[Coroutine[Any, Any, Any]], Future[Any]]]:
    """Run a raw asyncio peer in its own thread while the test drives the page with the sync API."""
    pool = ThreadPoolExecutor(max_workers=2)
    yield lambda coroutine: pool.submit(asyncio.run, coroutine)
    pool.shutdown(wait=False, cancel_futures=True)
