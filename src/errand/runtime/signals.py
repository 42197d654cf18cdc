"""The supervisor's signals: handlers that only take note, and a wake-up socket that makes
its event loop look at once, so nothing lands in the middle of its bookkeeping."""

from __future__ import annotations

import selectors
import signal
import socket
from collections import deque
from types import FrameType

from errand.runtime import wire


class SignalWakeup:
    """SIGTERM and SIGINT are queued in `stops`; they and SIGCHLD wake the loop (its
    "signal" key), which acts on them."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.stops: deque[int] = deque()  # received, not yet acted on
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
                (signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                (signal.SIGCHLD, _reap_in_the_loop))}

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stops.append(signum)

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
