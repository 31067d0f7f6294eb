"""The web page as the relay serves it: the shipped dist/ is a fresh build, its script and stylesheet are pinned by
Subresource Integrity, headers are strict, GETs are inert."""

from __future__ import annotations

import base64
import filecmp
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import httpx

WEB = Path(__file__).resolve().parents[2] / "clients" / "web"
STATIC = Path(__file__).resolve().parents[2] / "relay" / "static"


def test_shipped_dist_matches_a_fresh_build(tmp_path: Path):
    node = shutil.which("node")
    assert node, "Node.js is needed to rebuild the web client"
    assert (WEB / "node_modules" / "esbuild").is_dir(), "run: npm --prefix clients/web ci"
    fresh = tmp_path / "dist"
    subprocess.run([node, str(WEB / "build.mjs"), "--outdir", str(fresh)], check=True, timeout=120, capture_output=True)
    shipped = sorted(path.name for path in STATIC.iterdir())
    assert shipped == sorted(path.name for path in fresh.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(STATIC, fresh, shipped, shallow=False)
    assert mismatch == [] and errors == [], (
        f"stale files {mismatch}: run 'npm --prefix clients/web ci && npm --prefix clients/web run build' "
        "and commit relay/static/"
    )


def test_page_and_assets_are_served_with_strict_headers(relay_server):
    with httpx.Client(base_url=relay_server.http_url, timeout=10) as client:
        for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"), ("/sw.js", "text/javascript"),
                           ("/style.css", "text/css")):
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(kind)
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self' 'wasm-unsafe-eval'" in csp
            assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert f"ws://127.0.0.1:{relay_server.port}" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
        page = client.get("/").text
        assert "<script" in page and "<script>" not in page  # only external scripts; inline ones would be blocked


def test_unknown_paths_are_not_served(relay_server):
    with httpx.Client(base_url=relay_server.http_url, timeout=10) as client:
        for path in ("/index.html", "/../pyproject.toml", "/%2e%2e/relay/web.py", "/relay-download/abc/x.bin",
                     "/web.py", "/dist/app.js", "/node_modules/hash-wasm/package.json"):
            assert client.get(path).status_code == 404, path


def test_plain_gets_never_touch_a_room(relay_server):
    with httpx.Client(base_url=relay_server.http_url, timeout=10) as client:
        before = len(relay_server.relay.rooms)
        for path in ("/", "/?code=word-word-word-word", "/ws/word-word-word-word",
                     "/ws/word-word-word-word?role=receive", "/ws/42", "/ws?role=send&v=2"):
            assert client.get(path).status_code in (200, 404), path
        assert len(relay_server.relay.rooms) == before


def test_served_assets_match_the_subresource_integrity_of_the_page(relay_server):
    """The page's script and stylesheet carry integrity="sha384-..." and the relay serves exactly those bytes."""
    with httpx.Client(base_url=relay_server.http_url, timeout=10) as client:
        page = client.get("/").text
        tags = re.findall(r"<(?:script|link)\b[^>]*>", page)
        pinned = {}
        for tag in tags:
            source = re.search(r'\b(?:src|href)="([^"]+)"', tag)
            if source is None or source.group(1) not in ("app.js", "style.css"):
                continue
            integrity = re.search(r'\bintegrity="sha384-([A-Za-z0-9+/=]+)"', tag)
            assert integrity is not None, f"no integrity on {tag}"
            pinned[source.group(1)] = integrity.group(1)
        assert sorted(pinned) == ["app.js", "style.css"], tags
        for name, expected in pinned.items():
            served = client.get(f"/{name}").content
            assert base64.b64encode(hashlib.sha384(served).digest()).decode() == expected, name


def test_the_browser_loads_the_pinned_assets_and_would_refuse_altered_ones(context, relay_server):
    """Chromium enforces the integrity attributes: the page runs, and the same tag with a wrong hash is blocked."""
    page = context.new_page()
    page.goto(relay_server.http_url + "/")
    page.wait_for_selector("#send-view")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgba(0, 0, 0, 0)"
    attempt = """(integrity) => new Promise((resolve) => {
        const link = document.createElement("link");
        link.rel = "stylesheet";
        link.href = "style.css";
        link.integrity = integrity;
        link.onload = () => resolve("loaded");
        link.onerror = () => resolve("blocked");
        document.head.append(link);
    })"""
    pinned = page.get_attribute('link[rel="stylesheet"]', "integrity")
    assert page.evaluate(attempt, pinned) == "loaded"
    assert page.evaluate(attempt, "sha384-" + "A" * 64) == "blocked"
