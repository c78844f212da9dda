"""Our streaming extension ``stream_options: {"include_progress": true}``: where a prompt stands.

Sent as SSE *comment* lines, not as data chunks, so that every OpenAI client (the SDKs skip
comments, as the SSE standard says) sees exactly the stream it always did::

    : queued {"index":0,"position":2}
    : progress {"index":0,"total":3000,"cached":0,"processed":512,"time_ms":840}

``queued`` comes whenever a choice's place in the wait queue changes (1 = the next free slot is
its); ``progress`` once when the choice takes a slot (``processed`` = ``cached``, the reused
prefix) and after every prefill chunk, the last with ``processed`` = ``total`` just before the
first token. The fields mirror llama.cpp's ``prompt_progress`` (``total``, ``cache``,
``processed``, ``time_ms``), with ``cached`` spelled as in our usage object.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class QueuePosition(BaseModel):
    index: int = Field(description="the choice")
    position: int = Field(ge=1, description="1 takes the next slot that frees")


class PromptProgress(BaseModel):
    index: int = Field(description="the choice")
    total: int = Field(description="prompt tokens")
    cached: int = Field(description="prompt tokens reused from a cache, not computed")
    processed: int = Field(description="prompt tokens in the slot's cells so far, cached ones included")
    time_ms: int = Field(description="milliseconds since the choice took its slot")
