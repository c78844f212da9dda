"""``/tokenize`` and ``/detokenize`` (our extension, in llama.cpp server's shapes)."""

from __future__ import annotations

from server.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse, TokenPiece
from server.services.chat import special_text
from server.services.pipeline import Pipeline
from server.services.sampling import check_token_ids


class TokenService:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        # Text of any length: tokenized in a worker thread, not on the event loop.
        return await self.pipeline.off_loop(lambda: self._tokenize(req))

    def _tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        engine = self.pipeline.engine
        tokens = engine.tokenize(req.content, add_special=req.add_special, parse_special=req.parse_special)
        if not req.with_pieces:
            return TokenizeResponse(tokens=tokens)
        return TokenizeResponse(tokens=[TokenPiece(id=t, piece=special_text(engine, t)) for t in tokens])

    async def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        return await self.pipeline.off_loop(lambda: self._detokenize(req))

    def _detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        engine = self.pipeline.engine
        check_token_ids(req.tokens, self.pipeline.info.n_vocab, param="tokens", what="'tokens'")
        raw = b"".join(engine.token_bytes(t, special=True) for t in req.tokens)
        return DetokenizeResponse(content=raw.decode("utf-8", errors="replace"))
