"""Channels: the configuration language (`root:4,root.mail:2,root.heavy:1:sequential`) and
the pure decision of which channels may start jobs now."""

from __future__ import annotations

import re
from dataclasses import dataclass

from errand.errors import ConfigurationError

_NAME = re.compile(r"root(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One configured channel: how many of its jobs may run at once, cluster-wide, and
    whether it runs one job at a time in order (sequential) or is paused."""

    name: str
    capacity: int | None
    sequential: bool = False
    paused: bool = False

    @property
    def counts_running(self) -> bool:
        """Does what may be claimed here depend on what runs (capacity, sequence, pause)?"""
        return self.capacity is not None or self.sequential or self.paused


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


def ancestors(channel: str) -> list[str]:
    """`root.mail.bulk` -> [`root`, `root.mail`, `root.mail.bulk`]."""
    parts = channel.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


class ChannelPlan:
    """Decides which channels may start jobs now, from capacities and running counts.

    A running job counts against its channel and every configured ancestor; a job on an
    unconfigured channel runs under its nearest configured ancestor. With nothing
    configured there is no cap at all (the workers' concurrency alone limits).
    """

    def __init__(self, channels: dict[str, ChannelConfig], running: dict[str, int],
                 stuck: set[str]) -> None:
        self.channels = channels
        self.free: dict[str, int | None] = {}
        for name, state in channels.items():
            if state.paused or name in stuck:
                self.free[name] = 0
            elif state.capacity is None:
                self.free[name] = None
            else:
                used = sum(n for channel, n in running.items() if name in ancestors(channel))
                self.free[name] = max(state.capacity - used, 0)

    def limits(self, channel: str) -> list[str]:
        """The configured channels a job of `channel` counts against, root first."""
        return [name for name in ancestors(channel) if name in self.channels]

    def has_room(self, jobs: int) -> bool:
        """Could `jobs` more start anywhere without any limit saying no (none paused,
        sequential or stuck, every capacity with that many free slots)?"""
        return all(not config.sequential for config in self.channels.values()) and all(
            free is None or free >= jobs for free in self.free.values())

    def blocked(self) -> list[str]:
        """Channels whose whole subtree cannot start a job now."""
        return sorted(name for name, free in self.free.items() if free == 0)

    def take(self, channel: str) -> bool:
        """Reserve a slot for a job of `channel` if every limit it falls under has one."""
        limits = self.limits(channel)
        if any(self.free[name] == 0 for name in limits):
            return False
        for name in limits:
            free = self.free[name]
            if free is not None:
                self.free[name] = free - 1
        return True
