"""``lmspec serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the engine.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with SSE streaming:
``data: {chunk}`` lines, then ``data: [DONE]``), ``GET /v1/models``, ``GET /health``. Usage
counts (prompt, completion, total tokens) in every response; with ``stream_options:
{"include_usage": true}`` a last chunk carries them when streaming. Errors have OpenAI's
shape, ``{"error": {"message", "type", "param", "code"}}``, with status 400 (a malformed or
out-of-range request), 404 (an unknown model or path) or 503 (the engine is draining); the
server keeps serving.

``n`` (1..16) asks for n completions of the one prompt: n engine requests, choice i seeded
``seed + i`` (a repeated seeded request repeats all n), returned as choices 0..n-1 (when
streaming, their chunks interleaved, each with its index, and one ``[DONE]`` after the last);
usage counts the prompt once and the completion tokens of every choice. ``best_of`` (>= n,
completions only, not with streaming) generates best_of candidates, candidate i seeded as
choice i, and returns the n whose sampled tokens have the highest cumulative log-probability,
highest first; usage counts every candidate's tokens.

One engine thread runs the engine's steps; HTTP handlers hand it requests and read their
outputs from per-request queues. A client that disconnects mid-stream has its requests (every
choice's) aborted: their blocks are freed in the engine's next iteration. On shutdown
(SIGTERM, Ctrl-C) uvicorn stops accepting, the in-flight requests finish, then the engine
thread stops.

Chat template: the checkpoint's (``chat_template`` in its tokenizer config, as a Jinja
string) when it has one and jinja2 is installed; else the documented default, ChatML::

    <|im_start|>{role}\\n{content}<|im_end|>\\n ... <|im_start|>assistant\\n

(for lmspec's byte-level vocabularies the markers are plain text, tokenized like any other).
"""

import asyncio
import itertools
import json
import math
import queue
import threading
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, replace

from lmspec.serve.engine import Engine, Output, SamplingParams

DEFAULT_TEMPLATE = "chatml"


def chatml(messages: list[dict]) -> str:
    """The default chat template (ChatML, as Qwen's and many others')."""
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(out) + "<|im_start|>assistant\n"


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind


# ----------------------------------------------------------------------------- engine thread


# no ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
# (``request: Request``) at runtime, and Request is imported inside build_app


class EngineRunner:
    """The engine on a thread of its own. ``submit`` (from an event loop) returns an
    asyncio queue that receives the request's ``Output``s, then None (or the engine's
    exception); ``abort`` frees a request; ``stop`` finishes the in-flight requests
    (``drain``) or aborts them, then ends the thread."""

    def __init__(self, engine: Engine, idle_wait_s: float = 0.05):
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._outs: dict[Hashable, queue.Queue] = {}
        self._stop, self._draining = threading.Event(), False
        self._idle = idle_wait_s
        self._ids = itertools.count()
        self.thread = threading.Thread(target=self._run, name="lmspec-engine", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> "EngineRunner":
        self.thread.start()
        return self

    @property
    def accepting(self) -> bool:
        return not self._draining and self.error is None

    def submit(self, prompt: list[int], params: SamplingParams,
               q: asyncio.Queue | None = None) -> tuple[Hashable, asyncio.Queue]:
        """``q``: a queue to share with other requests (the choices of one HTTP request);
        each request's ``Output``s carry its id, and each puts its own None (or exception)
        when it ends."""
        if not self.accepting:
            raise BadRequest("the server is shutting down", status=503, kind="server_error")
        rid = f"r{next(self._ids)}"
        self.engine.validate(prompt, params)  # raises ValueError here, in the caller's thread
        q = asyncio.Queue() if q is None else q
        self._outs[rid] = (asyncio.get_running_loop(), q)
        self._commands.put(("add", rid, prompt, params))
        return rid, q

    def abort(self, rid: Hashable) -> None:
        self._commands.put(("abort", rid, None, None))

    def stop(self, drain: bool = True, timeout: float | None = 30.0) -> None:
        self._draining = True
        if not drain:
            for rid in list(self._outs):
                self.abort(rid)
        self._stop.set()
        self._commands.put(("wake", None, None, None))
        self.thread.join(timeout)

    def _run(self) -> None:
        eng = self.engine
        try:
            while True:
                block = not eng.has_work()
                if block and self._stop.is_set() and self._commands.empty():
                    return
                try:
                    cmd = self._commands.get(timeout=self._idle) if block else \
                        self._commands.get_nowait()
                    self._handle(cmd)
                    while True:
                        self._handle(self._commands.get_nowait())
                except queue.Empty:
                    pass
                if eng.has_work():
                    for o in eng.step():
                        self._deliver(o)
        except BaseException as e:  # the engine failed: every waiter gets the error
            self.error = e
            for loop, q in self._outs.values():
                loop.call_soon_threadsafe(q.put_nowait, e)
            self._outs.clear()

    def _handle(self, cmd) -> None:
        kind, rid, prompt, params = cmd
        if kind == "add":
            self.engine.add_request(prompt, params, request_id=rid)
        elif kind == "abort" and rid in self._outs:
            self.engine.abort(rid)
            loop, q = self._outs.pop(rid)
            loop.call_soon_threadsafe(q.put_nowait, None)
            self.engine.release(rid)

    def _deliver(self, o: Output) -> None:
        entry = self._outs.get(o.request_id)
        if entry is None:
            return
        loop, q = entry
        loop.call_soon_threadsafe(q.put_nowait, o)
        if o.finished:
            loop.call_soon_threadsafe(q.put_nowait, None)
            del self._outs[o.request_id]
            self.engine.release(o.request_id)


# ----------------------------------------------------------------------------- requests


@dataclass
class Prepared:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    n: int = 1  # choices returned
    best_of: int = 1  # candidates generated (>= n); the n most likely are returned


MAX_N = 16  # the most choices (n) or candidates (best_of) one request may ask for

_KNOWN = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "top_k", "min_p", "n", "stream", "stream_options", "stop", "seed",
          "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs",
          "top_logprobs", "user", "ignore_eos", "stop_token_ids", "echo", "best_of",
          "logit_bias", "suffix"}


def _num(body: dict, name: str, default, kind=float):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not
                                                                  float(v).is_integer()):
        raise BadRequest(f"{name}: expected {'an integer' if kind is int else 'a number'}, "
                         f"got {v!r}", name)
    return kind(v)


def _count(body: dict, name: str, default: int) -> int:
    v = _num(body, name, default, int)
    if not 1 <= v <= MAX_N:
        raise BadRequest(f"{name}: expected an integer in [1, {MAX_N}], got {v}", name)
    return v


def choice_seed(seed: int | None, i: int) -> int | None:
    """The seed of choice (or best_of candidate) ``i`` of a request seeded ``seed``: choice 0
    keeps the request's seed, so n=1 samples as before; the n choices differ, a repeated
    request repeats them, and best_of's candidate i is n's choice i. None: each choice's
    engine request draws its own."""
    return None if seed is None else seed + i


def best_candidates(candidates: list[list[Output]], n: int) -> list[int]:
    """The indices of the n candidates with the highest cumulative log-probability of their
    generated tokens (the sampled token's ``Output.logprob``, as the logprobs option reports
    it), highest first; ties keep candidate order."""
    score = [math.fsum(o.logprob for o in c) for c in candidates]
    return sorted(range(len(candidates)), key=lambda i: -score[i])[:n]


def prepare(body, tokenizer, chat: bool, max_model_len: int) -> Prepared:
    """Validates an OpenAI request body and turns it into prompt ids and SamplingParams;
    raises BadRequest naming the parameter."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    n = _count(body, "n", 1)
    if chat and body.get("best_of") is not None:
        raise BadRequest("best_of: not supported by chat completions (only /v1/completions)",
                         "best_of")
    best_of = _count(body, "best_of", n)
    if best_of < n:
        raise BadRequest(f"best_of: expected >= n ({n}), got {best_of}", "best_of")
    if best_of > n and body.get("stream"):
        raise BadRequest("best_of: cannot be used with stream=true", "best_of")
    for name in ("echo", "suffix", "logit_bias"):
        if body.get(name):
            raise BadRequest(f"{name}: not supported", name)
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in msgs):
            raise BadRequest("messages: expected a non-empty list of {role, content} objects "
                             "with string content", "messages")
        roles = {"system", "user", "assistant", "developer", "tool"}
        bad = [m["role"] for m in msgs if m["role"] not in roles]
        if bad:
            raise BadRequest(f"messages: unknown role {bad[0]!r}", "messages")
        prompt_ids = tokenizer.encode_ordinary(chatml(msgs))
    else:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if isinstance(p, str):
            if not p:
                raise BadRequest("prompt: expected a non-empty string", "prompt")
            prompt_ids = tokenizer.encode_ordinary(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool)
                                               for t in p):
            prompt_ids = list(p)
        else:
            raise BadRequest("prompt: expected a string or a list of token ids (one prompt)",
                             "prompt")
    max_tokens = _num(body, "max_completion_tokens", None, int) if chat else None
    max_tokens = max_tokens or _num(body, "max_tokens", 16, int)
    if max_tokens < 1:
        raise BadRequest(f"max_tokens: expected >= 1, got {max_tokens}", "max_tokens")
    if len(prompt_ids) + max_tokens > max_model_len:
        raise BadRequest(f"this model's context is {max_model_len} tokens: the prompt has "
                         f"{len(prompt_ids)} and max_tokens asks {max_tokens}", "max_tokens")
    stop = body.get("stop")
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, list | tuple) or len(stop) > 4 or not all(
            isinstance(s, str) and s for s in stop):
        raise BadRequest("stop: expected a string or up to 4 non-empty strings", "stop")
    lp = body.get("logprobs")
    if chat:
        lp = _num(body, "top_logprobs", 0, int) if lp else None
    elif lp is not None:
        lp = _num(body, "logprobs", 0, int)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise BadRequest(f"seed: expected an integer >= 0, got {seed!r}", "seed")
    so = body.get("stream_options") or {}
    try:
        params = SamplingParams(
            max_tokens=max_tokens, temperature=_num(body, "temperature", 1.0),
            top_p=_num(body, "top_p", 1.0), top_k=max(0, _num(body, "top_k", 0, int)),
            min_p=_num(body, "min_p", 0.0),
            presence_penalty=_num(body, "presence_penalty", 0.0),
            frequency_penalty=_num(body, "frequency_penalty", 0.0),
            repetition_penalty=_num(body, "repetition_penalty", 1.0),
            seed=seed, stop=tuple(stop), logprobs=lp,
            ignore_eos=bool(body.get("ignore_eos", False)),
            stop_token_ids=tuple(body.get("stop_token_ids") or ()))
    except ValueError as e:
        raise BadRequest(str(e), str(e).split(":")[0]) from None
    return Prepared(prompt_ids, params, bool(body.get("stream", False)),
                    bool(isinstance(so, dict) and so.get("include_usage")), n, best_of)


# ----------------------------------------------------------------------------- the app


def build_app(runner: EngineRunner, model_name: str):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="lmspec", docs_url=None, redoc_url=None)
    eng = runner.engine
    created = int(time.time())

    def error(status: int, message: str, param=None, kind="invalid_request_error", code=None):
        return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                       "code": code}}, status_code=status)

    @app.exception_handler(BadRequest)
    async def _bad(_, e: BadRequest):
        return error(e.status, str(e), e.param, e.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, e):
        return error(400, f"invalid request: {e.errors()[:1]}")

    @app.exception_handler(HTTPException)
    async def _http(_, e):
        return error(e.status_code, str(e.detail), kind="invalid_request_error"
                     if e.status_code < 500 else "server_error")

    @app.get("/health")
    async def health():
        if runner.error is not None:
            return error(500, f"engine failed: {runner.error!r}", kind="server_error")
        return {"status": "ok" if runner.accepting else "draining"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": created, "owned_by": "lmspec"}]}

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body is not valid JSON") from None
        if isinstance(body, dict) and body.get("model") not in (None, model_name):
            raise BadRequest(f"model: {body.get('model')!r} is not served here (this server "
                             f"serves {model_name!r})", "model", status=404,
                             kind="invalid_request_error")
        return body

    def submit_all(prep: Prepared) -> tuple[list[Hashable], asyncio.Queue]:
        """One engine request per candidate (best_of of them, n without best_of), each with
        its own id and derived seed, all feeding one queue; none stays if one is refused."""
        q: asyncio.Queue = asyncio.Queue()
        rids: list[Hashable] = []
        try:
            for i in range(prep.best_of):
                params = replace(prep.params, seed=choice_seed(prep.params.seed, i))
                rids.append(runner.submit(prep.prompt_ids, params, q)[0])
        except ValueError as e:
            abort_all(rids)
            if isinstance(e, BadRequest):
                raise
            raise BadRequest(str(e)) from None
        return rids, q

    def abort_all(rids) -> None:
        for rid in rids:  # finished ones are ignored
            runner.abort(rid)

    async def handle(request: Request, chat: bool):
        body = await body_of(request)
        if eng.tokenizer is None and (chat or not isinstance(body.get("prompt"), list)):
            raise BadRequest("this model has no tokenizer: send prompts as token ids",
                             "prompt")
        prep = prepare(body, eng.tokenizer, chat, eng.max_model_len)
        rids, q = submit_all(prep)
        kind = "chat.completion" if chat else "text_completion"
        oid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        n_prompt = len(prep.prompt_ids)
        if prep.stream:
            return StreamingResponse(stream(request, rids, q, chat, oid, n_prompt, prep),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        index = {rid: i for i, rid in enumerate(rids)}
        cands: list[list[Output]] = [[] for _ in rids]
        try:
            async for o in outputs(q, len(rids)):
                cands[index[o.request_id]].append(o)
        except asyncio.CancelledError:
            abort_all(rids)
            raise
        n_out = sum(len(c) for c in cands)  # every candidate was computed
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                 "total_tokens": n_prompt + n_out}
        chosen = best_candidates(cands, prep.n) if prep.best_of > prep.n else range(prep.n)
        choices = []
        for j, i in enumerate(chosen):
            lps = cands[i]
            content = "".join(o.text for o in lps)
            reason = lps[-1].finish_reason if lps and lps[-1].finished else None
            if chat:
                choice = {"index": j, "message": {"role": "assistant", "content": content},
                          "logprobs": _chat_logprobs(lps, eng)
                          if prep.params.logprobs is not None else None,
                          "finish_reason": reason}
            else:
                choice = {"index": j, "text": content, "finish_reason": reason,
                          "logprobs": _completion_logprobs(lps, eng)
                          if prep.params.logprobs is not None else None}
            choices.append(choice)
        return {"id": oid, "object": kind, "created": int(time.time()), "model": model_name,
                "choices": choices, "usage": usage, "system_fingerprint": "lmspec",
                "seed": prep.params.seed}

    async def outputs(q: asyncio.Queue, count: int = 1):
        """The Outputs of ``count`` requests sharing ``q``, until each has ended."""
        while count:
            item = await q.get()
            if item is None:
                count -= 1
                continue
            if isinstance(item, BaseException):
                raise BadRequest(f"engine failed: {item!r}", status=500, kind="server_error")
            yield item

    async def stream(request, rids, q, chat, oid, n_prompt, prep):
        """The n choices' chunks interleaved as they come, each with its index; [DONE] once
        all n have ended."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        index = {rid: i for i, rid in enumerate(rids)}
        n_out = 0

        def chunk(i: int, delta: str | None, reason, role=False):
            if chat:
                d = {"role": "assistant", "content": ""} if role else (
                    {} if delta is None else {"content": delta})
                c = {"index": i, "delta": d, "logprobs": None, "finish_reason": reason}
            else:
                c = {"index": i, "text": delta or "", "logprobs": None,
                     "finish_reason": reason}
            return "data: " + json.dumps({"id": oid, "object": kind,
                                          "created": int(time.time()), "model": model_name,
                                          "choices": [c]}) + "\n\n"

        try:
            if chat:
                for i in range(len(rids)):
                    yield chunk(i, None, None, role=True)
            async for o in outputs(q, len(rids)):
                n_out += 1
                if await request.is_disconnected():
                    abort_all(rids)
                    return
                i = index[o.request_id]
                if o.text:
                    yield chunk(i, o.text, None)
                if o.finished:
                    yield chunk(i, None if chat else "", o.finish_reason)
            if prep.include_usage:
                yield "data: " + json.dumps({
                    "id": oid, "object": kind, "created": int(time.time()),
                    "model": model_name, "choices": [],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                              "total_tokens": n_prompt + n_out}}) + "\n\n"
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            abort_all(rids)  # the client went away: free every choice's blocks
            raise

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


def _piece(eng: Engine, tok: int) -> str:
    return eng.tokenizer.decode([tok]) if eng.tokenizer is not None else str(tok)


def _completion_logprobs(outs: list[Output], eng: Engine) -> dict:
    return {"tokens": [_piece(eng, o.token) for o in outs],
            "token_logprobs": [o.logprob for o in outs],
            "top_logprobs": [{_piece(eng, t): lp for t, lp in (o.top_logprobs or {}).items()}
                             for o in outs],
            "text_offset": list(itertools.accumulate([0] + [len(o.text) for o in outs[:-1]]))}


def _chat_logprobs(outs: list[Output], eng: Engine) -> dict:
    return {"content": [{"token": _piece(eng, o.token), "logprob": o.logprob, "bytes": None,
                         "top_logprobs": [{"token": _piece(eng, t), "logprob": lp,
                                           "bytes": None}
                                          for t, lp in (o.top_logprobs or {}).items()]}
                        for o in outs]}


def serve(engine: Engine, *, host: str = "127.0.0.1", port: int = 8000,
          model_name: str = "lmspec", log_level: str = "info",
          graceful_s: float = 30.0) -> None:
    """Runs the server until SIGTERM/SIGINT; in-flight requests finish first."""
    import uvicorn

    runner = EngineRunner(engine).start()
    app = build_app(runner, model_name)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=graceful_s)
    try:
        uvicorn.Server(config).run()
    finally:
        runner.stop(drain=True, timeout=graceful_s)
