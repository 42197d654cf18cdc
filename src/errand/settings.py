"""Every `ERRAND_*` environment variable, read in one place with a clear error for bad values."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from errand.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///errand.db"


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Knobs of an App and its workers; `from_env` fills them from `ERRAND_*` variables."""

    database_url: str = DEFAULT_DATABASE_URL
    app: str | None = None
    channels: str | None = None
    no_delay: bool = False
    concurrency: int = field(default_factory=_cpu_count)
    lease: float = 30.0
    shutdown_grace: float = 30.0
    cancel_grace: float = 5.0
    poll_interval: float | None = None
    max_payload: int = 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls()
        values: dict[str, object] = {}
        for name, convert in _VARIABLES.items():
            raw = env.get("ERRAND_" + name.upper())
            if raw is not None and raw.strip() != "":
                values[name] = convert(name, raw.strip())
        return replace(settings, **values)  # type: ignore[arg-type]

    def with_overrides(self, **values: object) -> Settings:
        """Settings with the non-None values replaced (command-line flags over the environment)."""
        given = {key: value for key, value in values.items() if value is not None}
        return replace(self, **given)  # type: ignore[arg-type]


def no_delay_enabled(env: Mapping[str, str] | None = None) -> bool:
    """ERRAND_NO_DELAY, read at each call so a test or a shell can switch it on the fly."""
    raw = (os.environ if env is None else env).get("ERRAND_NO_DELAY", "").strip()
    return bool(raw) and _flag("no_delay", raw)


def _text(name: str, raw: str) -> str:
    return raw


def _flag(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"ERRAND_{name.upper()} must be 1 or 0, got {raw!r}")


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(
            f"ERRAND_{name.upper()} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (name == "lease" and value == 0):
        raise ConfigurationError(
            f"ERRAND_{name.upper()} must be a finite number of seconds"
            f"{' above 0' if name == 'lease' else ''}, got {raw!r}")
    return value


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"ERRAND_{name.upper()} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ConfigurationError(f"ERRAND_{name.upper()} must be at least 1, got {raw!r}")
    return value


_VARIABLES = {
    "database_url": _text,
    "app": _text,
    "channels": _text,
    "no_delay": _flag,
    "concurrency": _positive_int,
    "lease": _seconds,
    "shutdown_grace": _seconds,
    "cancel_grace": _seconds,
    "poll_interval": _seconds,
    "max_payload": _positive_int,
}
