"""The package boundary: the clients use nothing of the server but the shared, I/O-free modules, and the server
package builds without the clients or a built page."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What `clients` may import from `relay`: the wire protocol, the code words, the allocator tuning, and the
# protocol's frozen value base class (relay/record.py).
SHARED = {"relay.protocol", "relay.codes", "relay.tuning", "relay.record"}
# Imports that exist only because `relay serve` still has a copy in clients/cli.py until the CLI branch removes
# it (relay/command.py runs `serve` now). Each must still be present: once it is gone, delete it here.
PENDING: set[tuple[str, str]] = set()


def relay_imports(path: Path) -> set[str]:
    """Every ``relay`` module a file imports, at any depth (imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "relay")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "relay":
                found.update(f"relay.{alias.name}" for alias in node.names)
            elif node.module.startswith("relay."):
                found.add(node.module)
    return found


def test_clients_import_only_the_shared_modules_of_relay() -> None:
    imports = {(path.name, module) for path in sorted((ROOT / "clients").glob("*.py")) for module in
               relay_imports(path)}
    assert imports, "the AST walk found no import of relay at all: the test is broken"
    unexpected = {(name, module) for name, module in imports if module not in SHARED} - PENDING
    assert not unexpected, f"clients import server modules: {sorted(unexpected)}"
    assert PENDING <= imports, f"no longer imported, remove from PENDING: {sorted(PENDING - imports)}"


def test_the_walk_sees_every_form_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import relay.service\nfrom relay import metrics\nfrom relay.server import serve\n"
                      "def f():\n    import relay.rooms\nfrom . import sibling\nimport relayish\n")
    assert relay_imports(sample) == {"relay.service", "relay.metrics", "relay.server", "relay.rooms"}


def test_the_shared_modules_do_not_pull_in_the_server() -> None:
    code = ("import sys; import relay.protocol, relay.codes, relay.tuning, relay.record; "
            "print(sorted(m for m in sys.modules if m.startswith(('relay.', 'fastapi', 'uvicorn', 'starlette'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['relay.codes', 'relay.protocol', 'relay.record', 'relay.tuning']"


def test_metrics_and_service_do_not_import_each_other() -> None:
    assert "relay.service" not in relay_imports(ROOT / "relay" / "metrics.py")
    assert "relay.metrics" in relay_imports(ROOT / "relay" / "service.py")  # the one direction that is fine


def test_the_server_imports_without_a_built_page_and_says_so_when_asked_to_serve_it(tmp_path: Path) -> None:
    code = (
        "import relay.web as web, pathlib, sys\n"
        "web.STATIC = pathlib.Path(sys.argv[1])\n"
        "import relay.server\n"
        "try:\n"
        "    relay.server.create_app()\n"
        "except web.AssetsMissing as exc:\n"
        "    print('missing:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nothing")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("missing: the web page is not built: no index.html in ")


def test_importing_the_server_reads_no_file_of_the_page() -> None:
    code = ("import builtins, pathlib; opened = []\n"
            "orig = pathlib.Path.read_bytes\n"
            "pathlib.Path.read_bytes = lambda self: (opened.append(self.name), orig(self))[1]\n"
            "import relay.server; print(opened)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
