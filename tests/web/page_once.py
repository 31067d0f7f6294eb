"""One page-to-page transfer (one file, streamed to the downloads folder through the service worker), timed over
bare CDP with tests/web/measure.py, against a relay started from whichever tree is on PYTHONPATH. Run by path so
that two trees can be compared run for run, interleaved (issue 10: the page after encryption against protocol 1):

    git worktree add --detach /tmp/v1page b099c92
    for i in 1 2 3; do
      (cd /tmp/v1page && PYTHONPATH=/tmp/v1page python3 /work/wt/page/tests/web/page_once.py 256)
      PYTHONPATH=$PWD python3 tests/web/page_once.py 256
    done

Prints one line: "RESULT <MiB/s> MiB/s <seconds> s ok=<bytes match>".
"""

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.config import Settings
from tests.conftest import start_relay
from tests.web import measure as m
from tests.web.cdp import Chromium
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS


@contextmanager
def ready_to_transfer(size: int) -> Iterator[tuple[Chromium, str, Path, Path]]:
    """A relay of the tree on PYTHONPATH, a random file of ``size`` MiB, an empty downloads folder and a headless
    Chromium allowed to save there: ``(browser, relay URL, file, downloads)``; all of it ends after."""
    relay = start_relay(Settings())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            source = m.make_file(folder, size * m.MiB)
            downloads = folder / "downloads"
            downloads.mkdir()
            browser = Chromium(CHROMIUM, CHROMIUM_ARGS)
            try:
                browser.allow_downloads(downloads)
                yield browser, relay.http_url, source, downloads
            finally:
                browser.close()
    finally:
        relay.stop()


def main(size: int) -> None:
    with ready_to_transfer(size) as (browser, url, source, downloads):
        elapsed, _, ok = m.browser_to_browser(browser, url, source, downloads)
        print(f"RESULT {size / elapsed:.1f} MiB/s {elapsed:.2f} s ok={ok}", flush=True)

if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
