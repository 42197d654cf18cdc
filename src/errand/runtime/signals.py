"""The supervisor's signals: handlers that only set flags, and a wake-up socket that makes
its event loop look at once."""

from __future__ import annotations

import selectors
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

from errand.runtime import wire

Handler = Callable[[int, FrameType | None], Any]


class SignalWakeup:
    """SIGTERM/SIGINT call `on_stop`; SIGCHLD and both wake the loop (its "signal" key)."""

    def __init__(self, selector: selectors.BaseSelector, on_stop: Handler) -> None:
        # A job process inherits this mask, so a retract (SIGUSR1) sent before it has set
        # its handler waits instead of killing it; it unblocks the signal once ready.
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._write.fileno())
        selector.register(self._read, selectors.EVENT_READ, "signal")
        self._old_handlers = {
            signum: signal.signal(signum, handler) for signum, handler in (
                (signal.SIGTERM, on_stop), (signal.SIGINT, on_stop),
                (signal.SIGCHLD, _reap_in_the_loop))}

    def drain(self) -> None:
        wire.drain(self._read)

    def restore(self) -> None:
        """Give the process its signals back as they were (the selector is closed apart)."""
        signal.set_wakeup_fd(self._old_wakeup)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._read.close()
        self._write.close()


def _reap_in_the_loop(signum: int, frame: FrameType | None) -> None:
    """Nothing to do here: the wake-up fd makes the loop reap."""
