"""`smoltrain serve`: an OpenAI-compatible API for LM runs, puzzle solving for TRM runs, and the playground page.

LM runs answer ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` as the OpenAI
API does (streaming with server-sent events ending in ``data: [DONE]``); their requests are decoded together by
the batching :class:`~smoltrain.serve.engine.Engine`. With ``adapters`` (``--adapter``), each LoRA adapter is
one more model id on the one loaded base; the engine decodes each batch with one of them. TRM-family runs
answer ``POST /v1/solve``. Every error is an OpenAI-style body ``{"error": {"message", "type", "param",
"code"}}``: a request the server cannot serve is a 4xx naming what to change, never a 500.

With an API key (``--api-key`` or ``SMOLTRAIN_API_KEY``) every request needs ``Authorization: Bearer KEY``,
except the page's shell (``/`` and ``/static/``), which holds no model output and lets a browser ask for the key.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from smoltrain.apps.generate import prompt_ids
from smoltrain.apps.solve import PuzzleSolution, solve_puzzle
from smoltrain.data.tokenizer import apply_chat_template, eos_id
from smoltrain.errors import SmoltrainError
from smoltrain.serve.engine import Delta, Engine, Event, Failed, Finished, Sampling
from smoltrain.serve.page import page_router
from smoltrain.serve.run import ServedRun, grid_values, load_served_run
from smoltrain.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields, SolveRequest

API_KEY_ENV = "SMOLTRAIN_API_KEY"


class ServeError(Exception):
    """A request the server refuses: becomes an OpenAI-style error body with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error_response(err: ServeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status,
                        headers=headers)


class APIKeyMiddleware:
    """Refuses (401) a request without ``Authorization: Bearer KEY``. Plain ASGI, so streaming passes untouched."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        page_shell = path == "/" or path.startswith("/static/")  # no model output: a browser must reach it to ask
        if scope["type"] == "http" and not page_shell:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                message = ("missing API key: send the header Authorization: Bearer KEY" if not given
                           else "incorrect API key: send the key the server was started with")
                await _error_response(ServeError(401, message, code="invalid_api_key",
                                                 type_="authentication_error"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    first = err.errors()[0] if err.errors() else {}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON: send a JSON object", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    what = first.get("msg", "invalid request")
    if first.get("type") == "missing":
        return f"missing required parameter {param!r}", param
    return (f"invalid value for {param!r}: {what}" if param else f"invalid request body: {what}"), param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, err: ServeError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return _error_response(ServeError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        message = str(err.detail)
        if err.status_code == 404 and message == "Not Found":
            message = "no such endpoint: the API is under /v1 (models, chat/completions, completions, solve)"
        return _error_response(ServeError(err.status_code, message))

    @app.exception_handler(SmoltrainError)
    async def _user_mistake(_: Request, err: SmoltrainError) -> JSONResponse:
        return _error_response(ServeError(400, " ".join(str(err).split())))


# ---------------------------------------------------------------------------------------------------
# LM requests
# ---------------------------------------------------------------------------------------------------


def _check_model(run: ServedRun, model: str | None) -> str | None:
    """The adapter a request's ``model`` names (None: the run itself); an unknown id is a 404 listing the ids."""
    if model is None or model == run.name:
        return None
    if model in run.adapters:
        return model
    ids = ", ".join(map(repr, run.model_ids))
    raise ServeError(404, f"the model {model!r} does not exist: this server serves {ids} "
                          "(GET /v1/models lists them)", param="model", code="model_not_found")


def _need_family(run: ServedRun, family: str) -> None:
    if run.family == family:
        return
    if run.family == "trm":
        raise ServeError(400, f"{run.name} is a TRM run ({run.kind} puzzles), not a language model: POST the "
                              "puzzle to /v1/solve", code="wrong_model_family")
    raise ServeError(400, f"{run.name} is a language model, not a TRM run: use /v1/chat/completions or "
                          "/v1/completions", code="wrong_model_family")


def _prompt_ids(run: ServedRun, text: str, max_tokens: int | None, param: str) -> tuple[list[int], int]:
    """The prompt's tokens and the completion budget, refused when they do not fit the context."""
    assert run.lm is not None and run.context is not None
    ids = prompt_ids(run.lm, text)
    if not ids:
        raise ServeError(400, "the prompt is empty: give some text", param=param)
    room = run.context - len(ids)
    if room < 1:
        raise ServeError(400, f"the prompt has {len(ids)} tokens, but this model's context is {run.context} "
                              "tokens: shorten it", param=param, code="context_length_exceeded")
    if max_tokens is None:
        return ids, room
    if max_tokens > room:
        raise ServeError(400, f"this model's context is {run.context} tokens; the prompt has {len(ids)} and "
                              f"max_tokens asks for {max_tokens}: ask for at most {room}", param="max_tokens",
                         code="context_length_exceeded")
    return ids, max_tokens


class _Choices:
    """The sequences of one request, their events in one asyncio queue, and cancellation on the way out."""

    def __init__(self, engine: Engine, prompts: Sequence[tuple[list[int], int]], req: SamplingFields,
                 adapter: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.sequences = []
        self.prompt_tokens = sum(len(ids) for ids, _ in prompts)
        for p, (ids, max_tokens) in enumerate(prompts):
            for j in range(req.n):
                index = p * req.n + j
                sampling = Sampling(max_tokens, req.temperature, req.top_p if req.top_p < 1.0 else None, req.stops,
                                    None if req.seed is None else req.seed + j)
                self.sequences.append(engine.submit(ids, sampling, self._emitter(loop, index), adapter))

    def _emitter(self, loop: asyncio.AbstractEventLoop, index: int) -> Callable[[Event], None]:
        def emit(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
            except RuntimeError:  # the event loop is gone (server shutting down): nobody to tell
                pass
        return emit

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Every event until each choice has finished; cancels what is left when the consumer goes away."""
        open_choices = len(self.sequences)
        try:
            while open_choices:
                index, event = await self.queue.get()
                if not isinstance(event, Delta):
                    open_choices -= 1
                yield index, event
        finally:
            for seq in self.sequences:
                seq.cancel()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _respond(choices: _Choices, req: SamplingFields, obj: str, make_choice: Callable[[int, str, str], dict],
                   make_chunk: Callable[[int, str | None, str | None, bool], dict],
                   prefix: Callable[[int], str] = lambda _: "") -> Any:
    """A whole response, or a stream of chunks: what chat and text completions share."""
    rid = f"{'chatcmpl' if obj.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    head = {"id": rid, "object": obj, "created": created, "model": req.model}

    if not req.stream:
        texts = {i: prefix(i) for i in range(len(choices.sequences))}
        reasons: dict[int, str] = {}
        completion = 0
        async for index, event in choices.events():
            if isinstance(event, Delta):
                texts[index] += event.text
            elif isinstance(event, Finished):
                reasons[index] = event.reason
                completion += event.completion_tokens
            else:
                raise ServeError(500, event.message, type_="server_error")
        return {**head, "choices": [make_choice(i, texts[i], reasons[i]) for i in sorted(texts)],
                "usage": _usage(choices.prompt_tokens, completion), "system_fingerprint": None}

    async def stream() -> AsyncIterator[str]:
        completion = 0
        for i in range(len(choices.sequences)):
            yield _sse({**head, "choices": [make_chunk(i, prefix(i), None, True)]})
        pending = ""  # events that arrived together go out in one write: fewer sends when the loop is behind
        async for index, event in choices.events():
            if isinstance(event, Delta):
                pending += _sse({**head, "choices": [make_chunk(index, event.text, None, False)]})
            elif isinstance(event, Finished):
                completion += event.completion_tokens
                pending += _sse({**head, "choices": [make_chunk(index, None, event.reason, False)]})
            elif isinstance(event, Failed):
                pending += _sse(error_body(event.message, "server_error"))
                break
            if choices.queue.empty():
                yield pending
                pending = ""
        if pending:
            yield pending
        if req.stream_options is not None and req.stream_options.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(choices.prompt_tokens, completion)})
        yield _sse("[DONE]")

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _lm_routes(app: FastAPI, run: ServedRun, engine: Engine | None) -> None:
    created = int(time.time())

    def lm_engine(model: str) -> tuple[Engine, str | None]:
        """The engine and the adapter (None: the run itself) of a request for ``model``."""
        adapter = _check_model(run, model)
        _need_family(run, "lm")
        assert engine is not None
        return engine, adapter

    def card(model_id: str) -> dict[str, Any]:
        facts = {"id": model_id, "object": "model", "created": created, "owned_by": "smoltrain", "family": run.family}
        if model_id in run.adapters:  # an adapter on the run: OpenAI's field for a fine-tune's base
            facts["parent"] = run.name
        return facts

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card(model_id) for model_id in run.model_ids]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        return card(_check_model(run, model_id) or run.name)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        eng, adapter = lm_engine(req.model)
        prompt = apply_chat_template([{"role": m.role, "content": m.text} for m in req.messages],
                                     add_generation_prompt=True)
        wanted = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        choices = _Choices(eng, [_prompt_ids(run, prompt, wanted, "messages")], req, adapter)

        def choice(i: int, text: str, reason: str) -> dict:
            return {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None}

        def chunk(i: int, text: str | None, reason: str | None, first: bool) -> dict:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            return {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}

        return await _respond(choices, req, "chat.completion" + (".chunk" if req.stream else ""), choice, chunk)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        eng, adapter = lm_engine(req.model)
        prompts = req.prompts
        if not prompts:
            raise ServeError(400, "prompt is an empty list: give at least one prompt", param="prompt")
        choices = _Choices(eng, [_prompt_ids(run, p, req.max_tokens, "prompt") for p in prompts], req, adapter)

        def echoed(i: int) -> str:
            return prompts[i // req.n] if req.echo else ""

        def choice(i: int, text: str, reason: str) -> dict:
            return {"index": i, "text": text, "finish_reason": reason, "logprobs": None}

        def chunk(i: int, text: str | None, reason: str | None, first: bool) -> dict:
            return {"index": i, "text": text or "", "finish_reason": reason, "logprobs": None}

        return await _respond(choices, req, "text_completion", choice, chunk, prefix=echoed)


# ---------------------------------------------------------------------------------------------------
# TRM requests
# ---------------------------------------------------------------------------------------------------


def _changed(before: np.ndarray, after: np.ndarray) -> list[list[int]]:
    if before.shape != after.shape:
        return [[r, c] for r in range(after.shape[0]) for c in range(after.shape[1])]
    return np.argwhere(before != after).tolist()


def _legend(run: ServedRun) -> dict[str, str]:
    """What the grid values mean when they are tokens (maze); empty when they are the kind's own numbers."""
    kind, config = run.puzzle_kind, run.trm_config
    assert kind is not None and config is not None
    decoded = np.asarray(kind.decode(np.zeros(config.seq_len, dtype=np.int64)))
    if decoded.dtype.kind in "iu":
        return {}
    return {str(t): str(np.asarray(kind.decode(np.full(config.seq_len, t))).reshape(-1)[0])
            for t in range(config.vocab_size)}


def solution_body(run: ServedRun, solution: PuzzleSolution, as_grid: bool) -> dict[str, Any]:
    """The /v1/solve response (see serveapi.md): the answer, its verdict and every ACT step's grid."""
    kind = solution.kind
    trace = solution.trace
    previous = np.asarray(grid_values(kind, trace.inputs))
    steps = []
    for tokens, q_halt in zip(trace.steps, solution.q_halt, strict=True):
        grid = np.asarray(grid_values(kind, tokens))
        steps.append({"grid": grid.tolist(), "q_halt": q_halt, "changed": _changed(previous, grid)})
        previous = grid
    halted = next((i + 1 for i, q in enumerate(solution.q_halt) if q > 0.5), len(steps))
    answer: Any = grid_values(kind, solution.answer) if as_grid else kind.format(solution.answer)
    return {"kind": kind.name, "answer": answer, "valid": solution.correct, "verdict": solution.verdict.line,
            "input": grid_values(kind, trace.inputs), "legend": _legend(run), "steps": steps, "halted_at": halted}


def _trm_routes(app: FastAPI, run: ServedRun) -> None:
    lock = threading.Lock()  # one puzzle at a time through the model (the TRM carries per-batch buffers)

    @app.post("/v1/solve")
    def solve(req: SolveRequest) -> dict[str, Any]:  # a plain def: FastAPI runs it in its thread pool
        _check_model(run, req.model)
        _need_family(run, "trm")
        if (req.puzzle is None) == (req.example is None):
            raise ServeError(400, "give either 'puzzle' (the puzzle as text, or an ARC grid as a JSON list of "
                                  "rows) or 'example' (a test example's index), not both or neither",
                             param="puzzle")
        text = json.dumps(req.puzzle) if isinstance(req.puzzle, list) else req.puzzle
        try:
            with lock:
                solution = solve_puzzle(run.loaded, puzzle_text=text, example=req.example, max_steps=req.max_steps)
        except SmoltrainError as err:
            raise ServeError(400, " ".join(str(err).split()), param="puzzle" if text is not None else "example",
                             code="invalid_puzzle") from None
        as_grid = isinstance(req.puzzle, list) or (req.example is not None and run.kind == "arc")
        return solution_body(run, solution, as_grid)


# ---------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------


def create_app(run_dir: str | Path, *, api_key: str | None = None, adapters: Iterable[str | Path] = (),
               device: str = "auto", max_batch: int = 32, quantize: str | None = None) -> FastAPI:
    """The server of one run. ``api_key`` None reads ``SMOLTRAIN_API_KEY`` (unset or empty: no key needed).
    ``adapters`` (LoRA run or PEFT adapter directories) are served on the one loaded base, each as a model id of
    its own (its directory's name). ``quantize`` (``int8``): an LM run's linear layers in int8 for the CPU."""
    run = load_served_run(run_dir, device=device, adapters=adapters, quantize=quantize)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    engine: Engine | None = None
    if run.family == "lm":
        assert run.lm is not None
        engine = Engine(run.lm.model, run.lm.tokenizer, eos_id(run.lm.tokenizer), run.loaded.device,
                        max_batch=max_batch, use_adapter=run.use_model if run.adapters else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if engine is not None:
            engine.close()

    app = FastAPI(title=f"smoltrain serve: {run.name}", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.run = run
    app.state.engine = engine
    _install_error_handlers(app)
    _lm_routes(app, run, engine)
    _trm_routes(app, run)
    app.include_router(page_router(run))
    if key:
        app.add_middleware(APIKeyMiddleware, api_key=key)
    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None,
          adapters: Iterable[str | Path] = (), device: str = "auto", quantize: str | None = None) -> None:
    """Serve ``run_dir`` with uvicorn until interrupted (``smoltrain serve``)."""
    import uvicorn

    app = create_app(run_dir, api_key=api_key, adapters=adapters, device=device, quantize=quantize)
    run: ServedRun = app.state.run
    served = run.name + "".join(f", {model_id}" for model_id in run.adapters)
    print(f"serving {served} ({run.family}{', ' + run.kind if run.kind else ''}) on http://{host}:{port} "
             f"(page: /, API: /v1){' with an API key' if api_key or os.environ.get(API_KEY_ENV) else ''}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
