"""Helpers for tests that drive errand the way a user does: the CLI and real workers."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ERRAND = [sys.executable, "-m", "errand"]


def run_errand(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the errand CLI in a subprocess, as a user would."""
    return subprocess.run([*ERRAND, *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_worker(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `errand worker` in the background; the caller stops it."""
    return subprocess.Popen([*ERRAND, "worker", *args], cwd=cwd,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(condition: Callable[[], object], timeout: float = 30.0,
             interval: float = 0.02) -> object:
    """Poll `condition` until it returns something true; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def start_errand(*args: str, cwd: Path, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[str]:
    """Start any `errand` command in the background, stdout and stderr piped apart."""
    return subprocess.Popen([*ERRAND, *args], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def import_tasks(source: str, folder: Path, database_url: str,
                 monkeypatch: pytest.MonkeyPatch, prefix: str) -> ModuleType:
    """Write a tasks module into `folder` under a fresh name and import it, so this test and
    the worker subprocesses it starts (with cwd=folder) share the task names."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(source)
    monkeypatch.setenv("ERRAND_TEST_DIR", str(folder))
    for variable in ("ERRAND_NO_DELAY", "ERRAND_CHANNELS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    module.app.use_database(database_url)
    module.app.migrate()
    return module


def stop_all(processes: list[subprocess.Popen[Any]]) -> None:
    """SIGKILL whatever a test left running."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def worker(tasks: ModuleType, workers: list[subprocess.Popen[Any]], *args: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `errand worker` for a tasks module from `import_tasks`, in its folder."""
    process = start_worker("--app", f"{tasks.__name__}:app", "--database-url",
                           tasks.app.database_url, *args, cwd=Path(tasks.__file__).parent,
                           env=env)
    workers.append(process)
    return process
