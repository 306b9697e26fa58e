"""Everything a server process writes is one JSON object per line, tracebacks included:
our events, libraries' stdlib logging, asyncio's handler, warnings, uncaught exceptions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, logging, sys, threading, warnings
    from cache_edge.server.logs import configure_logging, get_logger

    configure_logging("info", "json", service="test-service")

    def fail(text):
        raise RuntimeError(text)

    try:
        fail("ours")
    except RuntimeError:
        get_logger("ours").error("our_event", exc_info=True)
    try:
        fail("library")
    except RuntimeError:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True
        )

    async def main():
        async def crash():
            fail("never retrieved")
        task = asyncio.get_running_loop().create_task(crash())
        await asyncio.sleep(0.01)
        del task
        gc.collect()

    if sys.argv[1] == "uvloop":
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())
    gc.collect()
    warnings.warn("something is deprecated", DeprecationWarning, stacklevel=1)
    thread = threading.Thread(target=fail, args=("in a thread",), name="worker")
    thread.start()
    thread.join()
    fail("uncaught")
    """
)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_line_is_one_json_object_with_its_traceback_inside(loop: str) -> None:
    pytest.importorskip(loop)
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", SCRIPT, loop],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1  # the uncaught exception still ends the process
    output = proc.stdout + proc.stderr
    lines = output.splitlines()
    for line in lines:
        assert line.startswith("{"), f"not a JSON line: {line!r}\n{output}"
    events = [json.loads(line) for line in lines]
    assert all(e["service"] == "test-service" and "timestamp" in e for e in events)
    by_text = {e["msg"]: e for e in events}
    expected = {
        "our_event": "RuntimeError: ours",
        "Failed to restore the pool connection floor; retrying": "RuntimeError: library",
        "uncaught_exception_in_thread": "RuntimeError: in a thread",
        "uncaught_exception": "RuntimeError: uncaught",
    }
    for msg, error in expected.items():
        assert msg in by_text, output
        assert "Traceback" in by_text[msg]["exception"] and error in by_text[msg]["exception"]
    assert by_text["Failed to restore the pool connection floor; retrying"]["logger"] == (
        "asyncpg.pool"
    )
    never = [e for e in events if "never retrieved" in e["msg"]]
    assert never and "RuntimeError: never retrieved" in never[0]["exception"], output
    assert any("something is deprecated" in e["msg"] for e in events), output
