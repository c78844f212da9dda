"""OpenAI's Responses API through the official ``openai`` SDK, against the fake engine.

Every body and stream event is validated against OpenAI's spec (``Response``, the
``ResponseStreamEvent`` members, ``ResponseItemList``), and the prompt the engine was given is read
back, so the tests state what a model is shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from pydantic import BaseModel

from server.api.app import create_app
from server.protocol.responses import ResponseCreateRequest
from server.services.pipeline import ANONYMOUS
from server.settings import Settings
from tests.api.conftest import spec_hook
from tests.helpers.recording_engine import RecordingEngine
from tests.spec.openapi import OpenAISpec

MODEL = "fake-model"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def reply(prompt: str) -> str:
    last_user = prompt.split("<|im_start|>user")[-1]
    if "returned:" in last_user:  # a tool result is in the conversation: answer from it
        return "It is sunny in Paris."
    if "You can call these tools" in prompt and "weather" in last_user:
        return CALL
    if "JSON please" in last_user:
        return '{"name": "Ada", "age": 36}'
    if "My name is" in prompt and "name?" in last_user:
        return "Your name is Ada."
    return "Hello there, friend."


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine(reply=reply, n_slots=2, n_ctx_per_seq=2048)


@pytest.fixture
def client(engine: RecordingEngine, openai_spec: OpenAISpec, spec_checks: list[str]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(max_queue=8, state_dir=":memory:"), engine=engine)) as c:
        c.event_hooks["response"].append(spec_hook(openai_spec, spec_checks))
        yield c


@pytest.fixture
def sdk(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def test_create_answers_with_a_spec_response(sdk: OpenAI, engine: RecordingEngine, spec_checks: list[str]) -> None:
    r = sdk.responses.create(
        model=MODEL,
        input="Say hi.",
        instructions="You are terse.",
        metadata={"run": "7"},
        temperature=0.5,
        max_output_tokens=100,
    )
    assert r.status == "completed" and r.output_text == "Hello there, friend."
    assert r.id.startswith("resp_") and r.object == "response" and r.completed_at is not None
    [message] = r.output
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    echoed = (r.instructions, r.metadata, r.temperature, r.max_output_tokens)
    assert echoed == ("You are terse.", {"run": "7"}, 0.5, 100)
    assert r.store is True and r.truncation == "disabled" and r.parallel_tool_calls is True
    assert r.usage is not None and r.usage.output_tokens == len("Hello there, friend.")
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0
    # The instructions are the system prompt, the string input one user message.
    assert "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>" in engine.prompts[-1]
    assert engine.params[-1].temperature == 0.5
    assert spec_checks == ["Response"]


def test_previous_response_id_continues_the_conversation(sdk: OpenAI, engine: RecordingEngine) -> None:
    r1 = sdk.responses.create(model=MODEL, input="My name is Ada. Say hi.", instructions="Be kind.")
    r2 = sdk.responses.create(model=MODEL, input="What is my name?", previous_response_id=r1.id)
    assert r2.output_text == "Your name is Ada." and r2.previous_response_id == r1.id
    r3 = sdk.responses.create(model=MODEL, input="Thanks.", previous_response_id=r2.id)
    prompt = engine.prompts[-1]
    turns = ["My name is Ada. Say hi.", "Hello there, friend.", "What is my name?", "Your name is Ada.", "Thanks."]
    positions = [prompt.index(t) for t in turns]
    assert positions == sorted(positions)  # every earlier input and output, in order
    assert "Be kind." not in prompt  # instructions are not carried over
    # The follow-up's prompt extends the one before, so the prefix cache serves it.
    assert r3.usage is not None and r3.usage.input_tokens_details.cached_tokens > 0


def test_retrieve_input_items_and_delete(sdk: OpenAI, client: TestClient, spec_checks: list[str]) -> None:
    items: Any = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "One."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two."}]},
        {"role": "user", "content": "Three?"},
    ]
    r = sdk.responses.create(model=MODEL, input=items)
    assert sdk.responses.retrieve(r.id).model_dump() == r.model_dump()
    listed = list(sdk.responses.input_items.list(r.id, order="asc"))
    assert [i.type for i in listed] == ["message"] * 4
    assert [i.role for i in listed] == ["developer", "user", "assistant", "user"]  # type: ignore[union-attr]
    assert all(i.id for i in listed) and len({i.id for i in listed}) == 4
    newest_first = client.get(f"/v1/responses/{r.id}/input_items", params={"limit": 2}).json()
    assert newest_first["has_more"] is True and [d["id"] for d in newest_first["data"]] == [i.id for i in listed[:1:-1]]
    rest = client.get(f"/v1/responses/{r.id}/input_items", params={"after": newest_first["last_id"]}).json()
    assert [d["id"] for d in rest["data"]] == [listed[1].id, listed[0].id] and rest["has_more"] is False
    assert "ResponseItemList" in spec_checks
    gone = client.delete(f"/v1/responses/{r.id}")
    assert gone.json() == {"id": r.id, "object": "response", "deleted": True}
    for call in (lambda: sdk.responses.retrieve(r.id), lambda: sdk.responses.delete(r.id)):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body == {  # type: ignore[comparison-overlap]
            "message": f"Response with id '{r.id}' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }


def test_store_false_keeps_nothing(sdk: OpenAI) -> None:
    r = sdk.responses.create(model=MODEL, input="Say hi.", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(model=MODEL, input="Again.", previous_response_id=r.id)
    assert err.value.code == "previous_response_not_found" and err.value.param == "previous_response_id"
    assert r.id in err.value.message


def test_stream_sends_the_typed_events_and_keeps_the_same_items(sdk: OpenAI) -> None:
    with sdk.responses.stream(model=MODEL, input="Say hi.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == final.output_text == "Hello there, friend."
    stored = sdk.responses.retrieve(final.id)
    assert [i.id for i in stored.output] == [i.id for i in final.output] and stored.output_text == final.output_text
    assert stored.usage == final.usage and stored.status == "completed"


def test_a_function_tool_round_trip(sdk: OpenAI, engine: RecordingEngine) -> None:
    asked = "What's the weather in Paris?"
    r = sdk.responses.create(model=MODEL, input=asked, tools=[WEATHER], tool_choice="required")  # type: ignore[list-item]
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_") and call.status == "completed"  # type: ignore[union-attr]
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert r.tools[0].model_dump(exclude_none=True) == {**WEATHER, "strict": True}  # strict on by default
    assert engine.params[-1].grammar is not None  # required: the grammar forces one call
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}
    answer = sdk.responses.create(model=MODEL, input=[result], previous_response_id=r.id, tools=[WEATHER])  # type: ignore[list-item]
    assert answer.output_text == "It is sunny in Paris."
    # The same, with the client keeping the whole history itself.
    history: Any = [{"role": "user", "content": asked}, call.model_dump(exclude_none=True), result]
    whole = sdk.responses.create(model=MODEL, input=history, tools=[WEATHER], store=False)  # type: ignore[list-item]
    assert whole.output_text == "It is sunny in Paris."
    assert engine.prompts[-1] == engine.prompts[-2]  # both ways, the model sees one conversation


def test_a_streamed_function_call(sdk: OpenAI) -> None:
    with sdk.responses.stream(
        model=MODEL,
        input="What's the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    added = next(e for e in events if e.type == "response.output_item.added")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [call] = final.output
    assert kinds[-1] == "response.completed" and "response.function_call_arguments.delta" in kinds
    assert (added.item.id, added.item.call_id) == (call.id, call.call_id)  # type: ignore[union-attr]
    assert done.arguments == args == call.arguments and json.loads(args) == {"city": "Paris"}  # type: ignore[union-attr]


def test_max_output_tokens_makes_it_incomplete(sdk: OpenAI) -> None:
    r = sdk.responses.create(model=MODEL, input="Say hi.", max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens" and r.completed_at is None
    assert r.output[0].status == "incomplete" and r.output_text == "Hello"  # type: ignore[union-attr]
    with sdk.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=5) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete" and last.response.output_text == "Hello"


class Person(BaseModel):
    name: str
    age: int


def test_parse_holds_the_output_to_the_schema(sdk: OpenAI, engine: RecordingEngine) -> None:
    r = sdk.responses.parse(model=MODEL, input="JSON please.", text_format=Person)
    assert r.output_parsed == Person(name="Ada", age=36)
    assert r.text.format is not None and r.text.format.type == "json_schema"  # echoed
    assert engine.params[-1].grammar is not None and "age" in engine.params[-1].grammar


def test_input_tokens_counts_the_prompt_a_create_processes(sdk: OpenAI, client: TestClient) -> None:
    ask = {"model": MODEL, "input": "Say hi.", "instructions": "Be brief."}
    counted = client.post("/v1/responses/input_tokens", json=ask).json()
    r = sdk.responses.create(model=MODEL, input="Say hi.", instructions="Be brief.")
    assert counted == {"object": "response.input_tokens", "input_tokens": r.usage.input_tokens}  # type: ignore[union-attr]


def test_the_unprefixed_route_answers_too(client: TestClient) -> None:
    r = client.post("/responses", json={"model": MODEL, "input": "Say hi."})
    assert r.status_code == 200 and client.get(f"/responses/{r.json()['id']}").json() == r.json()


def test_requests_are_counted_in_the_metrics(client: TestClient) -> None:
    client.post("/v1/responses", json={"model": MODEL, "input": "Say hi."})
    client.get("/v1/responses/resp_nothere")
    text = client.get("/metrics").text
    assert 'llamaserve_requests_total{endpoint="/v1/responses",status="200"} 1.0' in text
    assert 'llamaserve_requests_total{endpoint="/v1/responses/{response_id}",status="404"} 1.0' in text


def test_logprobs_come_with_the_text_when_included(sdk: OpenAI) -> None:
    ask: Any = {"model": MODEL, "input": "Say hi.", "top_logprobs": 2, "include": ["message.output_text.logprobs"]}
    r = sdk.responses.create(**ask)
    [part] = r.output[0].content  # type: ignore[union-attr]
    assert [lp.token for lp in part.logprobs] == list("Hello there, friend.")  # the fake's tokens are bytes
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in part.logprobs)
    with sdk.responses.stream(**ask) as stream:
        streamed = [lp.token for e in stream if e.type == "response.output_text.delta" for lp in e.logprobs]
    assert streamed == [lp.token for lp in part.logprobs]
    plain = sdk.responses.create(model=MODEL, input="Say hi.", top_logprobs=2)
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]  # not included: none, as OpenAI


def test_an_engine_failure_after_the_start_is_an_error_then_response_failed(
    client: TestClient, engine: RecordingEngine
) -> None:
    engine.fail_next_step = True
    events = [
        json.loads(line[6:])
        for line in client.post("/v1/responses", json={"input": "hi", "stream": True}).text.splitlines()
        if line.startswith("data: ")
    ]
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    error, failed = events[-2:]
    assert error["type"] == "error" and "engine failed" in error["message"]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"
    with pytest.raises(openai.NotFoundError):  # a failed response is not stored
        OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client).responses.retrieve(
            failed["response"]["id"]
        )
    assert client.post("/v1/responses", json={"input": "hi"}).json()["status"] == "completed"  # and it serves on


def test_our_extensions_are_honoured_as_on_the_other_generation_routes(
    sdk: OpenAI, engine: RecordingEngine, client: TestClient
) -> None:
    r = sdk.responses.create(model=MODEL, input="Say hi.", extra_body={"priority": -5, "top_k": 1, "seed": 3})
    assert r.status == "completed" and (engine.params[-1].top_k, engine.params[-1].seed) == (1, 3)
    model = client.app.state.llamaserve.registry.loaded()  # type: ignore[attr-defined]
    req = ResponseCreateRequest(input="Say hi.", priority=-5, store=False)
    assert model.responses.prepare(req, "resp_x", ANONYMOUS, None).generation.requests[0].priority == -5


def test_an_empty_input_is_answered_as_codex_probes(client: TestClient) -> None:
    r = client.post("/v1/responses", json={"model": MODEL, "input": [], "max_output_tokens": 1})
    assert r.status_code == 200 and r.json()["status"] == "incomplete"  # one token, then cut
    listed = client.get(f"/v1/responses/{r.json()['id']}/input_items").json()
    assert (listed["data"], listed["has_more"], listed["first_id"]) == ([], False, "")
