"""Fixtures of the fault battery: a tasks module on a fresh database, a fleet of workers."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from faultkit import TASKS, Fleet, Sql


@pytest.fixture
def tasks(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[ModuleType]:
    """The fault tasks, importable here and by worker subprocesses (cwd=tmp_path)."""
    name = f"fault_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(TASKS)
    monkeypatch.setenv("ERRAND_TEST_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    module.app.use_database(database_url)
    module.app.migrate()
    yield module
    module.app.close()


@pytest.fixture
def fleet(tasks: ModuleType, tmp_path: Path) -> Iterator[Fleet]:
    """Workers of the test; each one's process group is SIGKILLed at teardown."""
    started = Fleet(tasks, tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def sql(tasks: ModuleType, database_url: str) -> Sql:
    return Sql(database_url)
