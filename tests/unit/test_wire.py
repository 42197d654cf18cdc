"""The supervisor <-> job process framing, over a real socket pair."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from errand.jobs import Outcome
from errand.retry import TryEnd, Verdict
from errand.runtime import wire


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def test_a_burst_of_messages_is_read_whole_in_one_call(
        pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    sent = [("end", i, 1, ("success", "success", str(i) * i)) for i in range(50)]
    for message in sent:
        wire.send(left, message)
    assert wire.Reader(right).read() == sent


def test_a_message_split_across_reads_waits_for_its_rest(
        pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    reader = wire.Reader(right)
    frame = wire.encode(("run", 7, "x" * 200_000))  # larger than one read
    left.sendall(frame[:3])
    assert reader.read() == []
    left.sendall(frame[3:100_000])
    assert reader.read() == []
    left.sendall(frame[100_000:] + wire.encode(("stop", 7, 1)))
    assert reader.read(wait=True) == [("run", 7, "x" * 200_000), ("stop", 7, 1)]


def test_nothing_waiting_is_an_empty_list_and_a_closed_peer_is_none(
        pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    reader = wire.Reader(right)
    assert reader.read() == []
    wire.send(left, ("progress", 1, 1, 50, None))
    left.close()
    assert reader.read() == [("progress", 1, 1, 50, None)]  # what came before the close
    assert reader.read() is None


def test_a_try_end_survives_the_trip() -> None:
    end = TryEnd(Verdict.RETRY, Outcome.ERROR, result=None, error_type="Boom",
                 error_message="no", traceback="tb", seconds=3.0, ignore_retry=True,
                 duration=0.25, memory_mb=12.5)
    assert wire.unpack_end(wire.pack_end(end)) == end


def test_messages_before_a_reset_still_count(pair: tuple[socket.socket, socket.socket]) -> None:
    """A job process that dies with jobs still unread resets the connection: the end it
    reported before must not be lost with it (it was, once: a crash was then charged to
    the job before)."""
    left, right = pair
    wire.send(right, ("run", 9, "queued, never read"))
    wire.send(left, ("end", 8, 1, ("success", "success")))
    left.close()  # with unread data: Linux resets the connection
    reader = wire.Reader(right)
    assert reader.read() == [("end", 8, 1, ("success", "success"))]
    assert reader.read() is None
