"""The peers' virtualenv (bench/.peers/venv) and the way errand's scripts call into it.

The peers (pgqueuer, Procrastinate, Huey) are installed from PyPI into a virtualenv of
their own, so errand's environment stays clean; each peer measurement runs
`bench/peer_<name>.py <workload> ...` with that venv's Python and reads back the one
JSON line it prints.

    python bench/peers.py            # create or update the venv, print the versions
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(BENCH_DIR, ".peers", "venv")
PYTHON = os.path.join(VENV, "bin", "python")
# Unpinned on purpose: the comparison is with the peers' current releases; RESULTS.md
# records the versions that were measured.
REQUIREMENTS = ("pgqueuer", "asyncpg", "procrastinate", "psycopg[binary]", "huey")
PEER_TIMEOUT = 1800.0


def ensure_venv(upgrade: bool = False) -> str:
    """Create the peers' venv if it is missing (or `upgrade`); return its Python."""
    if not os.path.exists(PYTHON):
        print(f"# creating {VENV}", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        upgrade = True
    if upgrade:
        subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--upgrade",
                        *REQUIREMENTS], check=True)
    return PYTHON


def versions() -> dict[str, str]:
    """Installed versions of the peers (and their drivers) in the venv."""
    code = ("import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
            "('pgqueuer', 'asyncpg', 'procrastinate', 'psycopg', 'huey')}))")
    out = subprocess.run([ensure_venv(), "-c", code], check=True, capture_output=True,
                         text=True).stdout
    found: dict[str, str] = json.loads(out)
    return found


def measure(peer: str, workload: str, backend: str, jobs: int, postgres_url: str,
            options: dict[str, Any]) -> dict[str, Any]:
    """Run one round of `workload` for `peer`; return its JSON result."""
    command = [ensure_venv(), os.path.join(BENCH_DIR, f"peer_{peer}.py"), workload,
               "--backend", backend, "--jobs", str(jobs), "--postgres-url", postgres_url]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(command, cwd=BENCH_DIR, capture_output=True, text=True,
                          timeout=PEER_TIMEOUT, check=False)
    sys.stderr.write(done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{peer} {workload} failed (status {done.returncode}):\n"
                         f"{done.stdout[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


if __name__ == "__main__":
    ensure_venv(upgrade="--upgrade" in sys.argv)
    print(json.dumps(versions()))
