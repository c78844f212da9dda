"""The Responses stream state machine: items open one at a time, in output order, each closed with
its own events, and the output holds exactly the items the events announced."""

from __future__ import annotations

from server.protocol import ChunkDelta, ToolCallDelta, ToolCallFunctionDelta
from server.services.responses_output import _Writer


def test_items_follow_one_another_and_close_in_order() -> None:
    w = _Writer()
    events = [*w.reasoning("Think."), *w.feed(ChunkDelta(content="Hi")), *w.feed(ChunkDelta(content="!"))]
    call = ToolCallDelta(index=0, id="call_1", function=ToolCallFunctionDelta(name="f", arguments='{"a":'))
    events += w.feed(ChunkDelta(tool_calls=[call]))
    events += w.feed(ChunkDelta(tool_calls=[ToolCallDelta(index=0, function=ToolCallFunctionDelta(arguments="1}"))]))
    events += w.close("completed")
    assert [e["type"] for e in events] == [
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    reasoning, message, fc = w.output
    assert [i["type"] for i in w.output] == ["reasoning", "message", "function_call"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Think."}]
    assert message["content"][0]["text"] == "Hi!" and fc["arguments"] == '{"a":1}' and fc["call_id"] == "call_1"
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [e["output_index"] for e in done] == [0, 1, 2] and [e["item"] for e in done] == w.output
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["item"]["id"] for e in added] == [i["id"] for i in w.output]  # the same ids, start to end
    assert all(e["item"]["status"] == "in_progress" for e in added)


def test_a_cut_item_closes_incomplete_and_logprobs_ride_on_the_deltas() -> None:
    w = _Writer()
    w.logprob({"token": "H", "logprob": -0.1, "bytes": [72], "top_logprobs": []})
    first = w.content("H")
    assert first[-1]["logprobs"] == [{"token": "H", "logprob": -0.1, "bytes": [72], "top_logprobs": []}]
    closed = w.close("incomplete")
    assert closed[-1]["item"]["status"] == "incomplete"
    assert closed[0]["type"] == "response.output_text.done" and len(closed[0]["logprobs"]) == 1
    assert w.close("completed") == []  # nothing open: nothing to close
