"""The issue-12 benchmarks must never rot: each runs end to end on a tiny size and says the data arrived intact.

No speed is asserted: the numbers of a tiny run mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from benchmarks.servers import PIPING_BIN, ensure_piping_server

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180


def run(*args: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{") and line.endswith("}")]


def test_ws_client_choice_measures_both_directions() -> None:
    rows = run("benchmarks.ws_client_choice", "--mib", "8", "--clients", "websockets,wsclient")
    assert [(row["client"], row["direction"]) for row in rows] == [
        ("websockets", "down"), ("wsclient", "down"), ("websockets", "up"), ("wsclient", "up")]
    assert not [row for row in rows if "error" in row]


def test_cli_vs_piping_moves_a_verified_file_through_both_tools(tmp_path: Path) -> None:
    assert ensure_piping_server(install=True) == PIPING_BIN  # scripts/test.sh installs it; a missing one fails here
    rows = run("benchmarks.cli_vs_piping", "--sizes-mib", "4", "--receivers", "2", "--no-install",
               "--log-dir", str(tmp_path))
    assert [(row["tool"], row["receivers"]) for row in rows] == [
        ("relay CLI", 1), ("piping-server + curl", 1), ("relay CLI", 2), ("piping-server + curl", 2)]
    assert all(row["ok"] for row in rows), [row["error"] for row in rows]


def test_python_m_benchmarks_runs_scenario_8_with_its_issue_12_targets(tmp_path: Path) -> None:
    assert ensure_piping_server(install=True) == PIPING_BIN
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "8", "--no-install",
                           "--output", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                          env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(row["scenario"], row["system"]) for row in results["rows"]] == [
        ("8 CLI to disk, 4 MiB", "relay CLI"), ("8 CLI to disk, 4 MiB", "piping+curl"),
        ("8 CLI to disk, 4 MiB, 3 receivers", "relay CLI"), ("8 CLI to disk, 4 MiB, 3 receivers", "piping+curl")]
    assert all(row["ok"] and row["extra"]["load_average"] for row in results["rows"])
    names = [target["name"] for target in results["targets"]]
    assert "CLI -> CLI >= 1.2x piping-server + curl" in names and "sender <= 0.8 CPU-s/GiB" in names


def test_client_processes_cache_their_bytecode_outside_the_sources(monkeypatch) -> None:
    """A measured client starts as an installed one does, from cached bytecode, whatever the caller's setting."""
    from benchmarks.clientproc import child_environment

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    env = child_environment()
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert Path(env["PYTHONPYCACHEPREFIX"]).parts[-3:] == ("benchmarks", ".cache", "pycache")
