"""Text and JSON log lines, and the request id they carry from the context."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from server.ops.logs import LogFormat, configure_logging, make_handler, request_id_var


def logger_with(fmt: LogFormat) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    log = logging.getLogger(f"test.logging_setup.{fmt}")
    log.handlers[:] = [make_handler(fmt, stream)]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, stream


def test_json_lines_are_one_object_each_with_the_request_id() -> None:
    log, stream = logger_with("json")
    token = request_id_var.set("req-1")
    try:
        log.info("first %s", "line", extra={"slot": 3})
    finally:
        request_id_var.reset(token)
    log.warning("outside a request\nwith a newline")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the newline inside the message is escaped, not a second line
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "first line"
    assert first["request_id"] == "req-1"
    assert first["level"] == "INFO"
    assert first["logger"] == "test.logging_setup.json"
    assert first["slot"] == 3  # extra= fields are kept
    assert first["time"].endswith("+00:00")
    assert second["request_id"] == "-"
    assert second["message"] == "outside a request\nwith a newline"


def test_json_lines_carry_exceptions() -> None:
    log, stream = logger_with("json")
    try:
        raise ValueError("bad thing")
    except ValueError:
        log.exception("failed")
    rec = json.loads(stream.getvalue())
    assert rec["level"] == "ERROR"
    assert "ValueError: bad thing" in rec["exc_info"]


def test_text_lines_carry_the_request_id() -> None:
    log, stream = logger_with("text")
    token = request_id_var.set("abc123")
    try:
        log.info("hello")
    finally:
        request_id_var.reset(token)
    line = stream.getvalue().strip()
    assert line.endswith("INFO test.logging_setup.text [abc123] hello")


async def test_concurrent_requests_keep_their_own_ids() -> None:
    log, stream = logger_with("json")

    async def handle(rid: str) -> None:
        # As the middleware does: each request's task sets the id in its own context.
        request_id_var.set(rid)
        await asyncio.sleep(0.01)
        log.info("done")

    await asyncio.gather(*(asyncio.create_task(handle(f"r{i}")) for i in range(5)))
    ids = sorted(json.loads(line)["request_id"] for line in stream.getvalue().splitlines())
    assert ids == ["r0", "r1", "r2", "r3", "r4"]


def test_configure_logging_routes_ours_and_uvicorns_lines_through_one_format() -> None:
    stream = io.StringIO()
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(io.StringIO()))
    configure_logging("warning", "json", stream=stream)
    logging.getLogger("server.test").info("hidden below the level")
    logging.getLogger("server.test").warning("ours")
    logging.getLogger("uvicorn.error").error("theirs")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["message"] for r in records] == ["ours", "theirs"]
    assert logging.getLogger("uvicorn.error").handlers == []
