"""`rlhf policy serve vN`: an OpenAI-compatible endpoint for one policy version.

A small transformers-backed server (a FastAPI app of its own, not part of app/):

* ``GET /v1/models`` lists the one served model (``vN``);
* ``POST /v1/chat/completions`` answers in the OpenAI wire format, plain or streamed as
  server-sent events (``"stream": true``: ``chat.completion.chunk`` objects, then
  ``data: [DONE]``).

The prompt goes through the one prompting pipeline (trainer/prompting.py: the policy's
chat template, the left-truncation that leaves room for the response, the EOS stop
set), and sampling uses the same explicit parameters as the labelers' sampler
(trainer/generation.py: ``top_k`` off, no repetition penalty, temperature 0 = greedy),
so what a user sees here is what labelers were shown. Requests are served one at a time
(one model, one lock): this is for trying a version and for evaluation scripts, not for
production traffic; with vLLM installed on a GPU, :func:`vllm_command` gives vLLM's own
OpenAI server instead.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

DEFAULT_MAX_TOKENS = 256


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = ""

    def text(self) -> str:
        """The message's text (OpenAI content parts of type ``text`` are joined)."""
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat-completions request this server honours (others ignored)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    seed: int | None = None
    stop: str | list[str] | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


class _Cancel(Exception):
    """Raised inside generate's streamer to end a stream early (client gone or stop string)."""


class PolicyServer:
    """One loaded policy and the sampling it does for the endpoint."""

    def __init__(self, policy_dir: str | Path, model_name: str, device: Any = None) -> None:
        import torch

        from trainer.policy_io import ensure_pad_token, load_policy
        from trainer.prompting import eos_token_ids

        self.model_name = model_name
        self.model, self.tokenizer = load_policy(Path(policy_dir), device=device, dtype=torch.float32)
        self.pad_id = ensure_pad_token(self.tokenizer, self.model)
        self.eos_ids = eos_token_ids(self.tokenizer, self.model)
        self.created = int(time.time())
        self.lock = threading.Lock()

    # -- prompting and sampling -------------------------------------------------------

    def prompt_ids(self, request: ChatRequest, max_new_tokens: int) -> list[int]:
        from trainer.prompting import encode_prompt, prompt_token_limit, render_prompt

        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                    for m in request.messages]
        text = render_prompt(self.tokenizer, None, messages)
        return encode_prompt(self.tokenizer, text, prompt_token_limit(self.model.config, max_new_tokens), "request")

    @staticmethod
    def max_new_tokens(request: ChatRequest) -> int:
        return request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS

    def _generate(self, ids: list[int], request: ChatRequest, rows: int, seed: int, streamer: Any = None) -> Any:
        """One ``generate`` call of ``rows`` samples of the prompt, with the sampler's parameters."""
        import torch

        from trainer.generation import SamplingParams, TransformersGenerator

        params = SamplingParams(temperature=request.temperature, top_p=request.top_p,
                                max_new_tokens=self.max_new_tokens(request))
        kwargs = TransformersGenerator._sampling_kwargs(params)
        input_ids = torch.tensor([ids] * rows, dtype=torch.long, device=self.model.device)
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=params.max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                streamer=streamer, **kwargs,
            )
        return out[:, len(ids):].tolist()

    def _cut(self, tokens: list[int]) -> tuple[list[int], str]:
        end = next((i for i, t in enumerate(tokens) if t in set(self.eos_ids)), None)
        return (tokens, "length") if end is None else (tokens[:end], "stop")

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # -- the two response shapes ------------------------------------------------------

    def complete(self, request: ChatRequest) -> dict[str, Any]:
        """A ``chat.completion`` object with ``n`` choices."""
        seed = request.seed if request.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4])
        ids = self.prompt_ids(request, self.max_new_tokens(request))
        with self.lock:
            rows = self._generate(ids, request, request.n, seed)
        choices, completion_tokens = [], 0
        for index, row in enumerate(rows):
            kept, finish = self._cut(row)
            text = self.decode(kept)
            text, cut = _apply_stop(text, request.stops())
            completion_tokens += len(kept)
            choices.append({"index": index, "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop" if cut else finish, "logprobs": None})
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name, "choices": choices,
            "usage": {"prompt_tokens": len(ids) * request.n, "completion_tokens": completion_tokens,
                      "total_tokens": len(ids) * request.n + completion_tokens},
        }

    def stream(self, request: ChatRequest) -> Iterator[str]:
        """Server-sent events of ``chat.completion.chunk`` objects (``n`` must be 1)."""
        seed = request.seed if request.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4])
        ids = self.prompt_ids(request, self.max_new_tokens(request))
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        stops = request.stops()
        hold = max((len(s) for s in stops), default=1) - 1

        def event(delta: dict[str, Any], finish: str | None = None) -> str:
            chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            return f"data: {json.dumps(chunk)}\n\n"

        tokens: queue.Queue[int | None | BaseException] = queue.Queue()
        cancel = threading.Event()
        streamer = _QueueStreamer(tokens, cancel, len(ids))

        def work() -> None:
            try:
                with self.lock:
                    self._generate(ids, request, 1, seed, streamer)
                tokens.put(None)
            except _Cancel:
                tokens.put(None)
            except BaseException as exc:  # noqa: BLE001 - reported to the stream
                tokens.put(exc)

        thread = threading.Thread(target=work, name="serve-generate", daemon=True)
        thread.start()
        yield event({"role": "assistant", "content": ""})
        generated: list[int] = []
        sent, finish = 0, "length"
        try:
            while True:
                item = tokens.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    break
                if item in self.eos_ids:
                    finish = "stop"
                    cancel.set()
                    break
                generated.append(item)
                text = self.decode(generated)
                text, cut = _apply_stop(text, stops)
                if cut:
                    finish = "stop"
                    cancel.set()
                    if len(text) > sent:
                        yield event({"content": text[sent:]})
                    sent = len(text)
                    break
                safe = len(text) - hold if stops else len(text)
                if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
                    safe = min(safe, len(text) - 1)
                if safe > sent:
                    yield event({"content": text[sent:safe]})
                    sent = safe
            text, _ = _apply_stop(self.decode(generated), stops)
            if len(text) > sent:
                yield event({"content": text[sent:]})
            yield event({}, finish)
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()
            thread.join(timeout=60)


class _QueueStreamer:
    """A transformers streamer that hands each generated token id to a queue.

    The first ``put`` is the prompt (skipped); raising :class:`_Cancel` from ``put`` ends
    ``generate`` early when the client went away or a stop string was seen.
    """

    def __init__(self, out: queue.Queue, cancel: threading.Event, prompt_len: int) -> None:
        self.out, self.cancel, self.prompt_seen = out, cancel, False

    def put(self, value: Any) -> None:
        if self.cancel.is_set():
            raise _Cancel()
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.out.put(int(token))

    def end(self) -> None:
        pass


def _apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string; True when one was found."""
    cuts = [text.index(s) for s in stops if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape (the official client raises the matching exception)."""
    return JSONResponse(status_code=status, content={
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}})


def create_app(server: PolicyServer) -> FastAPI:
    """The endpoint's FastAPI app around a loaded :class:`PolicyServer`."""
    api = FastAPI(title=f"rlhf-studio policy {server.model_name}", docs_url="/docs")

    @api.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "rlhf-studio"}]}

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": server.model_name}

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        try:
            body = ChatRequest.model_validate(await request.json())
        except Exception as exc:  # noqa: BLE001 - pydantic errors and bad JSON alike
            return _error(400, str(exc)[:2000], "invalid_request")
        if body.model != server.model_name:
            return _error(404, f"the model {body.model!r} does not exist; this server serves {server.model_name!r}",
                          "model_not_found", "model")
        if body.messages[-1].role == "assistant":
            return _error(400, "messages must end with a user (or system) turn", "invalid_messages", "messages")
        if body.stream:
            if body.n != 1:
                return _error(400, "streaming supports n=1 only", "unsupported", "n")
            return StreamingResponse(server.stream(body), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(server.complete, body)

    return api


def vllm_available() -> bool:
    """vLLM's OpenAI server needs vLLM installed and a CUDA device."""
    try:
        import torch

        from trainer.vllm_backend import vllm_available as installed

        return installed() and torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def vllm_command(policy_dir: str | Path, model_name: str, host: str, port: int) -> list[str]:
    """The command line of vLLM's own OpenAI-compatible server for a policy directory."""
    import sys

    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(policy_dir),
            "--served-model-name", model_name, "--host", host, "--port", str(port)]


def serve(policy_dir: str | Path, model_name: str, *, host: str = "127.0.0.1", port: int = 8001,
          backend: str = "auto") -> None:
    """Serve ``policy_dir`` until interrupted (``backend``: auto | transformers | vllm)."""
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        import os

        command = vllm_command(policy_dir, model_name, host, port)
        os.execv(command[0], command)  # noqa: S606 - replaces this process with vLLM's server
    import uvicorn

    uvicorn.run(create_app(PolicyServer(policy_dir, model_name)), host=host, port=port, log_level="info")
