"""The log writer between the pipeline and stdout, on a real pipe: never blocks, keeps order,
drops beyond its buffer and marks the gap once the pipe moves."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

import pytest
from support import wait_until

from sidecar.logs import PipeWriter


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose read end the test reads only when it wants to."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def line(i: int) -> str:
    return json.dumps({"event": "test.line", "i": i, "pad": "x" * 200}) + "\n"


def test_a_stuck_pipe_never_blocks_and_the_gap_is_marked_in_place(
    pipe: tuple[int, int],
) -> None:
    """Writes return at once with the pipe full; after the pipe moves, lines come in order
    with one log.lines_dropped line counting exactly what is missing, where it is missing."""
    read_end, write_end = pipe
    with os.fdopen(os.dup(write_end), "w") as stream:
        writer = PipeWriter(stream, capacity=50)
        started = time.monotonic()
        for i in range(2000):  # ~450 KB: far beyond the 64 KiB pipe plus 50 lines
            writer.write(line(i))
        assert time.monotonic() - started < 1.0
        assert writer.dropped_total > 0
        dropped = writer.dropped_total
        # The pipe moves: read what was buffered, then one more line comes after the gap.
        text = ""
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            text += drain(read_end)
            time.sleep(0.01)
        writer.write(line(2000))
        deadline = time.monotonic() + 10
        while '"i": 2000' not in text and time.monotonic() < deadline:
            text += drain(read_end)
            time.sleep(0.01)
        assert writer.close(2.0)
        text += drain(read_end)
    events = [json.loads(row) for row in text.splitlines()]
    numbers = [e["i"] for e in events if e["event"] == "test.line"]
    assert numbers == sorted(numbers)
    notes = [(n, e) for n, e in enumerate(events) if e["event"] == "log.lines_dropped"]
    assert notes
    assert sum(note["dropped"] for _, note in notes) == writer.dropped_total == dropped
    assert dropped == 2001 - len(numbers)
    for position, note in notes:
        # In place: exactly the missing lines between its neighbours.
        assert note["level"] == "warning"
        before, after = events[position - 1]["i"], events[position + 1]["i"]
        assert after - before - 1 == note["dropped"]
    assert events[-1]["i"] == 2000


def test_close_returns_within_its_bound_on_a_stuck_pipe(pipe: tuple[int, int]) -> None:
    """Exit never waits on a stuck pipe beyond the bound given to close()."""
    _, write_end = pipe
    with os.fdopen(os.dup(write_end), "w") as stream:
        writer = PipeWriter(stream, capacity=10_000)
        for i in range(1000):
            writer.write(line(i))
        wait_until(lambda: writer.dropped_total == 0, timeout=1)
        started = time.monotonic()
        assert writer.close(0.3) is False
        assert time.monotonic() - started < 1.0
