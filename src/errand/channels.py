"""The channel configuration language: `root:4,root.mail:2,root.heavy:1:sequential`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from errand.errors import ConfigurationError

_NAME = re.compile(r"root(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One configured channel: how many of its jobs may run at once, cluster-wide."""

    name: str
    capacity: int | None
    sequential: bool = False


def parse_channels(text: str | None) -> dict[str, ChannelConfig]:
    """Parse a channel list; an empty or missing list means `root` with no cap of its own."""
    configs: dict[str, ChannelConfig] = {}
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        config = _parse_entry(entry)
        if config.name in configs:
            raise ConfigurationError(f"channel {config.name!r} is configured twice in {text!r}")
        configs[config.name] = config
    return configs


def _parse_entry(entry: str) -> ChannelConfig:
    name, *rest = entry.split(":")
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"channel entry {entry!r}: the name must be 'root' or start with 'root.'")
    capacity: int | None = None
    sequential = False
    if rest:
        if not (rest[0].isascii() and rest[0].isdecimal()) or int(rest[0]) < 1:
            raise ConfigurationError(
                f"channel entry {entry!r}: the capacity must be a whole number >= 1")
        capacity = int(rest[0])
    for flag in rest[1:]:
        if flag != "sequential":
            raise ConfigurationError(
                f"channel entry {entry!r}: unknown flag {flag!r} (only 'sequential')")
        sequential = True
    if sequential and capacity not in (None, 1):
        raise ConfigurationError(f"channel entry {entry!r}: a sequential channel runs one job "
                                 "at a time, so its capacity must be 1")
    return ChannelConfig(name=name, capacity=1 if sequential else capacity, sequential=sequential)
