"""Messages between the supervisor and its job processes: marshalled tuples, length-prefixed,
over a Unix socket pair.

marshal is the cheapest codec for the plain values that travel here (ints, strings,
floats, None, dicts), and both ends are the same interpreter forked from one process, so
its format never differs. One `recv` reads every message waiting, so a burst of job ends
costs the supervisor one system call.
"""

from __future__ import annotations

import marshal
import socket
import struct
from typing import Any

from errand.jobs import Outcome
from errand.retry import TryEnd, Verdict

_HEADER = struct.Struct("!I")
_CHUNK = 1 << 16


def encode(message: tuple[Any, ...]) -> bytes:
    body = marshal.dumps(message)
    return _HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: tuple[Any, ...]) -> None:
    """Write one message whole (blocking); OSError when the other end is gone."""
    sock.sendall(encode(message))


def drain(sock: socket.socket) -> None:
    """Empty a non-blocking wake-up socket (the bytes only say "look")."""
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


class Reader:
    """Reassembles messages from a stream that may deliver them in pieces."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def read(self, wait: bool = False) -> list[tuple[Any, ...]] | None:
        """Every whole message the socket holds now (with `wait`, first block until some
        bytes come); None once the other end has closed and nothing is left."""
        flags = 0 if wait else socket.MSG_DONTWAIT
        closed = False
        while True:
            try:
                chunk = self.sock.recv(_CHUNK, flags)
            except BlockingIOError:
                break
            except ConnectionResetError:
                # The other end closed with bytes we sent still unread (a job process
                # that died with jobs queued): what it wrote before still counts.
                closed = True
                break
            if not chunk:
                closed = True
                break
            self._buffer += chunk
            flags = socket.MSG_DONTWAIT
        messages: list[tuple[Any, ...]] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if end > len(buffer):
                break
            messages.append(marshal.loads(buffer[start + _HEADER.size:end]))
            start = end
        del buffer[:start]
        return None if closed and not messages else messages


def pack_end(end: TryEnd) -> tuple[Any, ...]:
    return (end.verdict.value, end.outcome.value, end.result, end.error_type,
            end.error_message, end.traceback, end.seconds, end.ignore_retry, end.duration,
            end.memory_mb)


def unpack_end(fields: tuple[Any, ...]) -> TryEnd:
    verdict, outcome, *rest = fields
    return TryEnd(Verdict(verdict), Outcome(outcome), *rest)
