"""Storage backends, reached only through `open_backend(url)`."""

from __future__ import annotations

import importlib

from errand.errors import ConfigurationError
from errand.storage.base import Backend

# Imported on demand: an application on SQLite never pays for importing psycopg.
_BACKENDS = {
    "sqlite": ("errand.storage.sqlite.backend", "SqliteBackend"),
    "postgresql": ("errand.storage.postgres.backend", "PostgresBackend"),
    "postgres": ("errand.storage.postgres.backend", "PostgresBackend"),
}


def open_backend(url: str, *, pooled: bool = True) -> Backend:
    """Open the backend a database URL names, creating or upgrading its schema if needed.

    `pooled=False` gives one plain connection and no threads, as a forking worker needs.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in _BACKENDS:
        shown = url.rsplit("@", maxsplit=1)[-1]  # never echo a password
        raise ConfigurationError(
            f"unsupported database URL {shown!r}: use sqlite:///path.db or "
            "postgresql://user@host/dbname")
    module_name, class_name = _BACKENDS[scheme]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    if scheme == "sqlite":
        backend: Backend = backend_class(url)
    else:
        backend = backend_class(url, pooled=pooled)
    return backend


__all__ = ["Backend", "open_backend"]
