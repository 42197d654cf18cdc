"""Find the user's `App` from `--app module:attribute` (or `ERRAND_APP`)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys

from errand.app import App
from errand.errors import ConfigurationError
from errand.tasks import Task

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?$")


def _is_factory(value: object) -> bool:
    """A callable that needs no argument (`create_app`); a task or another function is not."""
    if isinstance(value, App | Task) or not callable(value):
        return False
    try:
        inspect.signature(value).bind()
    except (TypeError, ValueError):
        return False
    return True


def import_app(spec: str) -> App:
    """`package.module:attribute`; the attribute defaults to `app` and may be a factory."""
    if not _SPEC.match(spec.strip()):
        raise ConfigurationError(
            f"the app {spec!r} should look like myproject.tasks:app (module:attribute)")
    module_name, _, attribute = spec.strip().partition(":")
    attribute = attribute or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, find modules of this folder
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"cannot import the app module {module_name!r}: {exc}") from None
        raise
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}") \
            from None
    if _is_factory(found):
        found = found()
    if not isinstance(found, App):
        raise ConfigurationError(f"{spec!r} is a {type(found).__name__}, not an errand.App")
    return found


def load_app(args: argparse.Namespace, needed_for: str | None = None) -> App:
    """The app the command works on, pointed at `--database-url` when one is given.

    Without `--app`, a bare App is enough for commands that only read and steer jobs.
    """
    spec = getattr(args, "app", None) or os.environ.get("ERRAND_APP")
    if spec:
        app = import_app(spec)
    elif needed_for:
        raise ConfigurationError(
            f"{needed_for} needs your tasks: pass --app module:attribute or set ERRAND_APP")
    else:
        app = App()
    url = getattr(args, "database_url", None)
    if url:
        app.use_database(url)
    return app
