"""The errand application the benchmarks enqueue to and run workers on.

The database comes from `ERRAND_DATABASE_URL` (set by the bench for its workers);
`errand worker --app errand_app:app` runs from the bench/ folder.
"""

from __future__ import annotations

import harness

import errand

app = errand.App()


@app.task(name="bench.noop")
def noop(token: int) -> None:
    """A no-op job that records its start (see harness.record)."""
    harness.record(token)


@app.task(name="bench.idle")
def idle(token: int) -> None:
    """A no-op job that records nothing (the memory workload)."""
