"""The benchmark harness must never rot: ``python -m benchmarks --quick`` runs end to end and writes its report.

No speed is asserted here; the numbers of a tiny run mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT = 180



def test_quick_run_writes_table_json_and_chart(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-install", "--output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=QUICK_TIMEOUT,
    )
    assert "| scenario |" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    table = (tmp_path / "results.md").read_text()
    assert "## 1. Relay cost" in table
    assert "## Targets (issue 8)" in table
    raw = json.loads((tmp_path / "results.json").read_text())
    relay_rows = [row for row in raw["rows"] if row["system"] == "relay"]
    scenarios = {row["scenario"].split()[0] for row in relay_rows}
    assert scenarios == {"1", "2", "3", "4", "5", "6", "7"}
    failed = [(row["scenario"], row["error"]) for row in relay_rows if not row["ok"]]
    assert not failed, failed
    assert (tmp_path / "chart.png").stat().st_size > 0
