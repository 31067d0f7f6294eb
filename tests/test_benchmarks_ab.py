"""benchmarks/ab.py runs the relay from another commit's tree: its code first, whatever the caller's path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from benchmarks.ab import ROOT, RelayAt, export


def test_a_commit_is_exported_whole(tmp_path: Path) -> None:
    tree = export("HEAD", tmp_path)
    committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:relay/transport.py"], capture_output=True,
                               check=True, timeout=30).stdout
    assert (tree / "relay" / "transport.py").read_bytes() == committed
    assert (tree / "pyproject.toml").is_file()


def test_the_relay_runs_from_the_given_tree_first(tmp_path: Path) -> None:
    server = RelayAt(tmp_path, tmp_path / "tree")
    command = server.command()
    assert command[:3] == ["env", "-C", str(tmp_path / "tree")]  # ``python -c`` puts the cwd first on sys.path
    assert server.environment()["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "tree")
