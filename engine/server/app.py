"""The OpenAI-compatible chat server of one engine replica (FastAPI).

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (plain and streamed
as server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``),
``GET /v1/models``, ``GET /healthz``, ``GET /metrics``. Errors come in OpenAI's error shape:
400 for bad parameters, prompts longer than the context, and request fields the server does
not serve (``fields.FIELDS`` says which; ``param`` names the field), 404 for an unknown model.
A client that disconnects mid-request aborts it, which frees its pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from engine.errors import InvalidRequestError
from engine.runtime.async_engine import AsyncEngine
from engine.runtime.llm_engine import Prompt
from engine.runtime.outputs import RequestOutput
from engine.runtime.sampling_params import SamplingParams
from engine.server import fields
from engine.server import openai_api as api
from engine.server.logprobs import LogprobShaper
from engine.server.metrics import ServerMetrics
from engine.server.streaming import TextDeltas


@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    default_max_tokens: int = 256


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> JSONResponse:
    return JSONResponse(api.error_body(message, kind, code, param), status_code=status)


def _refused(e: ValueError) -> JSONResponse:
    """A request the server will not run as sent: 400, naming the field where one is to blame."""
    return _error(400, str(e), param=e.param if isinstance(e, fields.FieldError) else None)


class ChatService:
    """One request's journey: check, prompt, run, shape the answer. Owns nothing but the
    metrics; the engine thread owns the engine."""

    def __init__(self, engine: AsyncEngine, config: ServerConfig):
        self.engine = engine
        self.config = config
        self.metrics = ServerMetrics(config.model_name)

    def check_model(self, model: str | None) -> JSONResponse | None:
        if model and model != self.config.model_name:
            return _error(404, f"the model {model!r} does not exist; this server serves "
                          f"{self.config.model_name!r}", "invalid_request_error", "model_not_found", "model")
        return None

    def chat_prompt(self, req: api.ChatRequest) -> list[int]:
        tokenizer = self.engine.engine.tokenizer
        if tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer; use /v1/completions with token ids")
        return tokenizer.apply_chat_template(req.chat_messages(), add_generation_prompt=True)

    async def run(self, request: Request, prompt: Prompt, params: SamplingParams, salt: str,
                  ) -> AsyncIterator[RequestOutput]:
        """The request's outputs, with latency metrics; aborted if the client goes away."""
        start = time.perf_counter()
        last = None
        out = None
        async for out in self.engine.generate(prompt, params, salt):
            t = time.perf_counter()
            if last is None:
                self.metrics.ttft.labels(self.config.model_name).observe(t - start)
            else:
                self.metrics.itl.labels(self.config.model_name).observe(t - last)
            last = t
            yield out
            if not out.finished and await request.is_disconnected():
                return  # leaving the generator aborts the request
        if out is not None:
            self.metrics.finished(len(out.prompt_token_ids), out.num_cached_tokens, len(out.token_ids),
                                  out.finish_reason or "", time.perf_counter() - start)


def create_app(engine: AsyncEngine, config: ServerConfig) -> FastAPI:
    service = ChatService(engine, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="kvtier engine", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON")
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return _error(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None)

    @app.post("/v1/chat/completions")
    async def chat(req: api.ChatRequest, request: Request) -> Response:
        if (bad := service.check_model(req.model)) is not None:
            return bad
        try:
            fields.check(fields.CHAT, req.sent_fields())
            params = req.sampling_params(config.default_max_tokens)
            prompt = service.chat_prompt(req)
        except ValueError as e:
            return _refused(e)
        return await _respond(service, request, req, prompt=prompt, params=params, chat=True)

    @app.post("/v1/completions")
    async def completions(req: api.CompletionRequest, request: Request) -> Response:
        if (bad := service.check_model(req.model)) is not None:
            return bad
        try:
            fields.check(fields.COMPLETIONS, req.sent_fields())
            params = req.sampling_params(config.default_max_tokens)
        except ValueError as e:
            return _refused(e)
        return await _respond(service, request, req, prompt=req.prompt, params=params, chat=False)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": config.model_name, "object": "model", "created": 0, "owned_by": "kvtier",
                "max_model_len": engine.engine.max_model_len}
        return {"object": "list", "data": [card]}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "model": config.model_name}

    @app.get("/metrics")
    async def metrics() -> Response:
        connector = engine.engine.connector
        stats = connector.stats.as_dict() if connector is not None else None
        return Response(service.metrics.render(engine.num_running, engine.num_waiting, stats),
                        media_type=CONTENT_TYPE_LATEST)

    return app


async def _respond(service: ChatService, request: Request, req: api._Common, *, prompt: Prompt,
                   params: SamplingParams, chat: bool) -> Response:
    outputs = service.run(request, prompt, params, req.cache_salt or "")
    try:
        first = await anext(outputs)  # the engine refuses a bad request before any token
    except ValueError as e:
        code = "context_length_exceeded" if "tokens" in str(e) else None
        return _error(400, str(e), code=code)
    rid = api.new_id("chatcmpl" if chat else "cmpl")
    shaper = None
    if params.logprobs is not None:
        shaper = LogprobShaper(service.engine.engine.tokenizer, params.logprobs)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _sse(service, outputs, first, rid=rid, chat=chat, stops=params.stop,
                      include_usage=include_usage, shaper=shaper)
        return StreamingResponse(events, media_type="text/event-stream")
    last = first
    async for out in outputs:
        last = out
    if not last.finished:  # the client went away
        return Response(status_code=499)
    usage = api.usage(len(last.prompt_token_ids), len(last.token_ids), last.num_cached_tokens,
                      last.cached_tokens_by_source)
    model = service.config.model_name
    logprobs = _shape(shaper, chat, last, 0)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": last.text}, "logprobs": logprobs,
                  "finish_reason": last.finish_reason}
        body = {"id": rid, "object": "chat.completion", "created": api.now(), "model": model,
                "choices": [choice], "usage": usage}
    else:
        body = api.completion_chunk(rid, model, api.now(), last.text, last.finish_reason, logprobs=logprobs)
        body |= {"usage": usage}
    return JSONResponse(body)


def _shape(shaper: LogprobShaper | None, chat: bool, out: RequestOutput, start: int) -> dict | None:
    """The logprobs object of ``out``'s tokens from ``start`` on (None when not asked for)."""
    if shaper is None:
        return None
    token_ids, entries = out.token_ids[start:], (out.logprobs or [])[start:]
    return shaper.chat(token_ids, entries) if chat else shaper.completion(token_ids, entries)


async def _sse(service: ChatService, outputs: AsyncIterator[RequestOutput], first: RequestOutput, *,
               rid: str, chat: bool, stops: tuple[str, ...], include_usage: bool,
               shaper: LogprobShaper | None) -> AsyncIterator[bytes]:
    model, created = service.config.model_name, api.now()
    tokenizer = service.engine.engine.tokenizer
    deltas = TextDeltas(stops)
    num_sent = 0  # tokens whose logprobs have gone out

    def event(body: dict) -> bytes:
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def chunk(text: str, finish: str | None, role: bool = False, out: RequestOutput | None = None) -> dict:
        nonlocal num_sent
        logprobs = None
        if out is not None and shaper is not None and len(out.token_ids) > num_sent:
            logprobs = _shape(shaper, chat, out, num_sent)
            num_sent = len(out.token_ids)
        if not chat:
            return api.completion_chunk(rid, model, created, text, finish, logprobs=logprobs)
        delta = {"role": "assistant", "content": text} if role else {"content": text} if text else {}
        return api.chat_chunk(rid, model, created, delta, finish, logprobs=logprobs)

    if chat:
        yield event(chunk("", None, role=True))
    out = first
    try:
        while True:
            text = out.text if out.finished else (tokenizer.decode(out.token_ids) if tokenizer else "")
            new = deltas.delta(text, out.finished)
            if new:
                yield event(chunk(new, None, out=out))
            if out.finished:
                yield event(chunk("", out.finish_reason, out=out))
                break
            out = await anext(outputs)
    except StopAsyncIteration:  # aborted: the client went away
        return
    finally:
        await outputs.aclose()
    if include_usage:
        body = chunk("", None) | {"choices": [],
                                  "usage": api.usage(len(out.prompt_token_ids), len(out.token_ids),
                                                     out.num_cached_tokens, out.cached_tokens_by_source)}
        yield event(body)
    yield b"data: [DONE]\n\n"
