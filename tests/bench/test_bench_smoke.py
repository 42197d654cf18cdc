"""Keep the benchmarks working: every script runs once on a tiny N (no timing is judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import require_postgres

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=BENCH.parent, capture_output=True,
                          text=True, timeout=600, check=False)


def test_every_speed_benchmark_runs_on_a_tiny_n() -> None:
    require_postgres()
    result = run(str(BENCH / "run.py"), "--smoke")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_channel_claim_benchmark_runs_on_a_tiny_n() -> None:
    require_postgres()
    result = run(str(BENCH / "channel_claims.py"), "--jobs", "200", "--repeat", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count('"bench": "channel_claims"') == 2  # one JSON line a backend
