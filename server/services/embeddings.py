"""``/v1/embeddings``: input (text, token ids, ``{"content": ...}`` objects) -> pooled vectors, float or base64.

``usage`` counts the tokens embedded, the special tokens the tokenizer adds to a text (BOS, CLS/SEP)
included. With ``--pooling none`` the route refuses: it returns one vector per input, not per token.

The engine makes the embedder (for llama.cpp a second context on the model it has
loaded, see :mod:`server.engine.llama.embeddings`) on the first embeddings request,
so a server that never embeds never pays for a second context. Making it and
embedding run in a worker thread; the embedder serialises its own calls.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable, Sequence

from server.engine.base import Embedder, EmbeddingsUnavailableError, Engine, Pooling
from server.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ServiceUnavailableError,
    UnsupportedFieldError,
)
from server.protocol import ContentInput, Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from server.protocol.openai import EmbeddingInput
from server.services.sampling import check_token_ids

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
EMBEDDINGS_CTX = 2048

EmbedderFactory = Callable[[], Embedder]
_POOLED: dict[str, Pooling] = {"mean": "mean", "cls": "cls", "last": "last"}


class EmbeddingsService:
    def __init__(self, factory: EmbedderFactory, *, model_id: str, n_vocab: int, per_token: bool = False) -> None:
        self._factory = factory
        self.model_id = model_id
        self.per_token = per_token  # --pooling none
        self._n_vocab = n_vocab
        self._embedder: Embedder | None = None
        self._loading = asyncio.Lock()

    @classmethod
    def for_engine(cls, engine: Engine, *, model_id: str, pooling: str | None = None) -> EmbeddingsService:
        """Embeddings from the engine's own model, through an embedder it makes on first use."""
        info = engine.info
        n_ctx = min(EMBEDDINGS_CTX, max(info.n_ctx_per_seq, 512))
        pooled = _POOLED.get(pooling or "")  # none: no embedder pools, and create() refuses

        def make() -> Embedder:
            return engine.make_embedder(n_ctx, pooling=pooled)

        return cls(make, model_id=model_id, n_vocab=info.n_vocab, per_token=pooling == "none")

    async def embedder(self) -> Embedder:
        async with self._loading:
            if self._embedder is None:
                try:
                    self._embedder = await asyncio.to_thread(self._factory)
                except EmbeddingsUnavailableError as exc:
                    raise InvalidRequestError(
                        "This server's model cannot produce embeddings.", param="model", code="embeddings_unavailable"
                    ) from exc
                except Exception as exc:
                    raise ServiceUnavailableError(f"The embeddings model could not be loaded: {exc}") from exc
            return self._embedder

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None

    def _inputs(self, req: EmbeddingRequest, embedder: Embedder) -> list[list[int]]:
        items = _items(req.input)
        if not items:
            raise InvalidRequestError("'input' must not be empty.", param="input")
        if len(items) > MAX_INPUTS:
            raise InvalidRequestError(f"'input' takes at most {MAX_INPUTS} items.", param="input")
        lists: list[list[int]] = []
        for item in items:
            if isinstance(item, str):
                if item == "":
                    raise InvalidRequestError("'input' cannot contain an empty string.", param="input")
                lists.append(embedder.tokenize(item))
            else:
                lists.append(list(item))
        for i, ids in enumerate(lists):
            if not ids:
                raise InvalidRequestError(f"Input {i} is empty.", param="input")
            check_token_ids(ids, self._n_vocab, param="input", what=f"Input {i}")
            if len(ids) > embedder.n_ctx:
                raise ContextLengthExceededError(len(ids), embedder.n_ctx, param="input", prompt_tokens=len(ids))
        return lists

    async def create(self, req: EmbeddingRequest) -> EmbeddingList:
        if self.per_token:
            raise InvalidRequestError(
                "This server runs with --pooling none (one vector per token); /v1/embeddings returns one "
                "pooled vector per input: restart with --pooling mean, cls or last.",
                param="input",
                code="pooling_none",
            )
        embedder = await self.embedder()
        if req.dimensions is not None and req.dimensions != embedder.n_embd:
            raise UnsupportedFieldError(
                "dimensions", f"must be {embedder.n_embd} (this model's size) or omitted; it cannot be reduced"
            )
        # Tokenizing grows with the input, like embedding: both run off the event loop.
        inputs = await asyncio.to_thread(self._inputs, req, embedder)
        vectors = await asyncio.to_thread(lambda: [embedder.embed(ids) for ids in inputs])
        as_base64 = req.encoding_format == "base64"
        data = [Embedding(index=i, embedding=_base64(v) if as_base64 else v) for i, v in enumerate(vectors)]
        n_tokens = sum(len(ids) for ids in inputs)
        return EmbeddingList(
            data=data, model=self.model_id, usage=EmbeddingUsage(prompt_tokens=n_tokens, total_tokens=n_tokens)
        )


def _items(raw: EmbeddingInput) -> list[str | list[int]]:
    """Each input as text or token ids: a list of ints is one input, a ``{content}`` object its content."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, ContentInput):
        return [raw.content]
    if raw and all(isinstance(x, int) for x in raw):
        return [[x for x in raw if isinstance(x, int)]]
    items: list[str | list[int]] = []
    for x in raw:
        if isinstance(x, ContentInput):
            items.append(x.content)
        elif isinstance(x, str | list):
            items.append(x)
        else:
            raise InvalidRequestError("'input' mixes token ids with other inputs.", param="input")
    return items


def _base64(vector: Sequence[float]) -> str:
    # OpenAI's base64 format: the little-endian float32 array, as the SDK decodes it with numpy.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
