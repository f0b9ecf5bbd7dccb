"""The OpenAI-compatible HTTP app: `create_app(settings)` loads the model and returns a FastAPI app.

FastAPI reads the endpoints' annotations at run time, so its names are imported at module level.

Endpoints: POST /v1/chat/completions (streamed as server-sent events or not), GET /v1/models, GET /health.
Requests run one at a time on the engine's thread; the rest wait in a bounded queue (503 when full).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse

from .. import __version__, spec
from ..errors import InputError
from ..runtime import Sampling, open_model
from ..runtime.media import Picture
from .engine import Delta, Engine, Finish, Job
from .errors import ServeError, error_body
from .images import ImagePolicy, resolve_image
from .page import mount_page
from .requests import parse_chat_request
from .task import ChatTask, chat_task
from .toolcalls import ReplyParser, finish_reason, forced_prefix, reply_message, stream_deltas
from .worker import Worker

_DISCONNECT_POLL_S = 0.25  # how soon a non-streamed request notices its client left


@dataclass(frozen=True)
class Settings:
    """Everything `serve` is started with."""

    lm: Path
    mmprojs: tuple[Path, ...] = ()
    model_id: str = spec.MODEL_ID
    n_ctx: int = spec.DEFAULT_N_CTX
    threads: int | None = None
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 32 << 20
    max_queued: int = 8
    image_cache_bytes: int = 64 << 20
    state_cache_bytes: int = 256 << 20
    images: ImagePolicy = ImagePolicy()
    loras: tuple[tuple[Path, float], ...] = ()  # llama.cpp LoRA adapter GGUFs and their scales


def create_app(settings: Settings):
    """Load the GGUFs and build the app (also usable under any ASGI server, e.g. `uvicorn --factory`).

    Raises:
        ModelLoadError: a GGUF is missing, broken or does not fit the other.
    """
    model = open_model(settings.lm, list(settings.mmprojs), threads=settings.threads, loras=settings.loras)
    engine = Engine(
        model.lm,
        model.mmprojs,
        threads=model.threads,
        n_ctx=settings.n_ctx,
        image_cache_bytes=settings.image_cache_bytes,
        state_cache_bytes=settings.state_cache_bytes,
    )
    worker = Worker(settings.max_queued)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app):
        yield
        worker.stop()
        engine.close()
        model.close()

    app = FastAPI(title="minicpmv-gguf", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.worker, app.state.settings = engine, worker, settings
    mount_page(app, settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_headers=["*"])

    @app.exception_handler(ServeError)
    async def _serve_error(_request, err: ServeError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers())

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if settings.api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
                return JSONResponse(error_body("invalid or missing API key", status=401), status_code=401)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return _too_large(settings.max_body_bytes)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "busy": worker.busy, "waiting": worker.waiting}

    @app.get("/v1/models")
    async def models():
        card = {
            "id": settings.model_id,
            "object": "model",
            "created": created,
            "owned_by": "minicpmv-gguf",
            "modes": sorted(model.mmprojs),
            "meta": {"n_ctx": engine.n_ctx, "lm": model.lm.header.path.name},
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/images/prepare")
    async def prepare_image(request: Request):
        """Encode an image ahead of the question that will use it (a chat page calls this on attach)."""
        body = await _read_body(request, settings.max_body_bytes)
        ref = _prepare_ref(body)
        job = await asyncio.to_thread(_job, ref, engine, model.mmprojs, settings.images)
        ticket = worker.submit(lambda cancel: _encode_all(engine, job))
        try:
            result = await ticket.next()
        finally:
            ticket.cancel.set()
        return result

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_body(request, settings.max_body_bytes)
        task = chat_task(parse_chat_request(body))
        if task.model and task.model != settings.model_id:
            raise ServeError(404, f"model {task.model!r} not found; GET /v1/models lists {settings.model_id!r}")
        job = await asyncio.to_thread(_job, task, engine, model.mmprojs, settings.images)
        ticket = worker.submit(lambda cancel: engine.run(job, cancel))
        try:
            first = await ticket.next()  # errors before the first token are plain HTTP errors
        except InputError as err:
            raise ServeError(400, str(err)) from err
        except BaseException:
            ticket.cancel.set()
            raise
        reply = _Reply(
            task,
            job,
            on_done=lambda content: worker.when_idle(lambda: engine.warm(job, content, wanted=worker.has_waiting)),
        )
        if task.stream:
            return StreamingResponse(
                _sse(reply, ticket, first), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return JSONResponse(await _collect(reply, ticket, first, request))

    return app


def _too_large(cap: int) -> JSONResponse:
    return JSONResponse(error_body(f"the request body is over the {cap >> 20} MB cap", status=413), status_code=413)


async def _read_body(request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it passes `cap` (a chunked body has no Content-Length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ServeError(413, f"the request body is over the {cap >> 20} MB cap")
        chunks.append(chunk)
    return b"".join(chunks)


def _job(task: ChatTask, engine: Engine, mmprojs: dict, policy: ImagePolicy) -> Job:
    """The engine's job for a task: images read and checked, defaults filled in (runs off the event loop)."""
    mode = None
    if any(ref.detail == "high" for ref in task.images):
        if "4x" not in mmprojs:
            raise ServeError(
                400, 'detail "high" needs the 4x mmproj: start the server with --mmproj MMPROJ-4x.gguf', param="detail"
            )
        mode = "4x"
    if task.images and not mmprojs:
        raise ServeError(400, "this server has no mmproj: start it with --mmproj to send images", param="messages")
    side = engine.mmproj(mode).image_size if task.images else policy.low_detail_side
    policy = dataclasses.replace(policy, low_detail_side=side)
    pictures = tuple(Picture(resolve_image(ref.url, ref.detail, policy).rgb, "request") for ref in task.images)
    s = task.sampling
    try:
        sampling = Sampling(
            temperature=spec.TEMPERATURE if s.temperature is None else s.temperature,
            top_p=spec.TOP_P if s.top_p is None else s.top_p,
            top_k=spec.TOP_K if s.top_k is None else s.top_k,
            repeat_penalty=spec.REPEAT_PENALTY if s.repeat_penalty is None else s.repeat_penalty,
            min_p=s.min_p or 0.0,
            seed=s.seed,
        )
    except InputError as err:
        raise ServeError(400, str(err)) from err
    return Job(
        task.template_messages(),
        pictures,
        mode,
        thinking=task.thinking and task.grammar is None,  # a grammar from the first token leaves no room to think
        tools=task.template_tools(),
        sampling=sampling,
        max_tokens=s.max_tokens or spec.DEFAULT_MAX_TOKENS,
        stop=s.stop,
        grammar=task.grammar,
        prefill=forced_prefix(task.tool_choice, task.tool_name),
    )


def _prepare_ref(body: bytes) -> ChatTask:
    """A one-image task from `{"image_url": {"url": ..., "detail": ...}}` (the chat request's part shape)."""
    try:
        data = json.loads(body)
        part = {"type": "image_url", "image_url": data["image_url"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ServeError(400, 'the body must be {"image_url": {"url": ..., "detail": ...}}') from err
    request = {"messages": [{"role": "user", "content": [part]}]}
    return chat_task(parse_chat_request(request))


def _encode_all(engine: Engine, job: Job):
    """The worker's job for /v1/images/prepare: encode (or find) each picture; one summary dict."""
    t0 = time.perf_counter()
    encoded, new = zip(*(engine.encode(p, job.mode) for p in job.pictures)) if job.pictures else ((), ())
    yield {
        "object": "image.prepared",
        "mode": engine.mmproj(job.mode).mode,
        "images": [
            {"id": p.digest, "tokens": e.layout.image_positions, "cached": not fresh}
            for p, e, fresh in zip(job.pictures, encoded, new)
        ],
        "encode_ms": (time.perf_counter() - t0) * 1e3,
    }


class _Reply:
    """One response's ids and its parser: engine events in, OpenAI chunks and message out."""

    def __init__(self, task: ChatTask, job: Job, on_done=None) -> None:
        self.task, self.id, self.created = task, f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.on_done = on_done  # gets the reply's content when it ended by itself with plain text
        self.parser = ReplyParser(task.template_tools(), thinking=job.thinking, parse_tool_calls=bool(task.tools))
        self.events = self.parser.feed(job.prefill) if job.prefill else []

    def feed(self, event) -> list:
        new = self.parser.feed(event.text) if isinstance(event, Delta) else self.parser.finish()
        self.events += new
        return new

    def chunk(self, delta: dict | None, finish: str | None = None, **extra) -> dict:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.task.model or "minicpmv-gguf",
            "choices": choices,
            **extra,
        }

    def end(self, finish: Finish) -> str:
        """The finish reason; a reply that ended by itself with plain text goes to `on_done`."""
        reason = finish_reason(self.events, "length" if finish.reason == "length" else "stop")
        if self.on_done and finish.reason != "cancelled" and reason != "tool_calls":
            # The client will send this reply back as history: the engine can evaluate it in spare time.
            self.on_done(reply_message(self.events)["content"] or "")
        return reason


def _usage(finish: Finish) -> dict:
    u = finish.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens, "image_tokens": u.image_tokens},
    }


def _sse_line(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _sse(reply: _Reply, ticket, first):
    try:
        yield _sse_line(reply.chunk({"role": "assistant", "content": None}))
        event = first
        while event is not None:
            if isinstance(event, Finish):
                for delta in stream_deltas(reply.feed(event)):
                    yield _sse_line(reply.chunk(delta))
                timings = event.usage.timings()
                yield _sse_line(reply.chunk({}, reply.end(event), timings=timings))
                if reply.task.include_usage:
                    yield _sse_line(reply.chunk(None, usage=_usage(event)))
            else:
                for delta in stream_deltas(reply.feed(event)):
                    yield _sse_line(reply.chunk(delta))
            event = await ticket.next()
        yield b"data: [DONE]\n\n"
    except ServeError as err:
        yield _sse_line(err.body())
    finally:
        ticket.cancel.set()  # the client left (or the stream ended): stop generating at once


async def _collect(reply: _Reply, ticket, first, request) -> dict:
    finish, event = None, first
    try:
        while event is not None:
            if isinstance(event, Finish):
                finish = event
            reply.feed(event)
            while True:
                try:
                    event = await asyncio.wait_for(ticket.next(), _DISCONNECT_POLL_S)
                    break
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise
    finally:
        ticket.cancel.set()
    assert finish is not None
    return {
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.task.model or "minicpmv-gguf",
        "choices": [{"index": 0, "message": reply_message(reply.events), "finish_reason": reply.end(finish)}],
        "usage": _usage(finish),
        "timings": finish.usage.timings(),
    }
