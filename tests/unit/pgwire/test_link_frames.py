"""Link frames: one or several per WebSocket message, and malformed input refused."""

from __future__ import annotations

import pytest

from cache_edge.pgwire.link import (
    CALL,
    DATA,
    REPLY,
    batch,
    decode_frame,
    decode_frames,
    encode_frame,
)


def test_one_frame_round_trips() -> None:
    frame = encode_frame(CALL, 7, {"path": "/v1/query", "body": {"sql": "SELECT 1"}})
    assert decode_frame(frame) == (CALL, 7, {"path": "/v1/query", "body": {"sql": "SELECT 1"}})
    assert decode_frames(frame) == [decode_frame(frame)]


def test_a_batch_is_every_queued_frame_in_order() -> None:
    frames = [encode_frame(REPLY, n, [200, bytes([n]) * n, f"r{n}"]) for n in range(1, 6)]
    queue = list(frames[1:])
    message = batch(frames[0], lambda: queue.pop(0) if queue else None)
    assert queue == []
    assert [sid for _, sid, _ in decode_frames(message)] == [1, 2, 3, 4, 5]
    assert decode_frames(message)[4][2] == [200, b"\x05" * 5, "r5"]
    assert batch(frames[0], lambda: None) is frames[0]


def test_a_batch_stops_growing_at_about_a_mebibyte() -> None:
    big = encode_frame(DATA, 1, b"x" * 400_000)
    queue = [big] * 5
    message = batch(big, lambda: queue.pop() if queue else None)
    assert len(decode_frames(message)) == 3 and len(queue) == 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x01",  # not a frame
        encode_frame(DATA, 1, b"abc")[:-1],  # truncated
        encode_frame(DATA, 1, b"abc") + encode_frame(DATA, 2, b"abc")[:-1],
        encode_frame(DATA, 1, b"abc") + b"\x01",
        encode_frame(DATA, 1, b"abc") + b"\x93\xa1k\x01\x02",  # kind not an integer
    ],
)
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="malformed link frame"):
        decode_frames(data)
