"""The playground: one prompt to two policy endpoints, side by side (docs/admin.md, "Playground").

The endpoints are ``rlhf policy serve vN`` servers (trainer/serve.py, or vLLM's OpenAI
server), each serving one model; the web tier talks to them over HTTP in the OpenAI wire
format (``GET /v1/models``, ``POST /v1/chat/completions``) and never loads a model itself.
Both requests go out at once, so the page waits for the slower one only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.services.errors import Invalid
from app.services.webhooks import check_url

MAX_PROMPT_CHARS = 20_000
MAX_TOKENS = 2048
MAX_TEMPERATURE = 2.0
DEFAULT_MAX_TOKENS = 128
DEFAULT_TEMPERATURE = 0.7


@dataclass
class Ask:
    """What the admin sends: the prompt, an optional system turn, the sampling."""

    prompt: str
    system: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        self.prompt, self.system = self.prompt.strip(), self.system.strip()
        if not self.prompt:
            raise Invalid("write a prompt")
        if len(self.prompt) + len(self.system) > MAX_PROMPT_CHARS:
            raise Invalid(f"the prompt is too long (at most {MAX_PROMPT_CHARS} characters with the system turn)")
        if not 1 <= self.max_tokens <= MAX_TOKENS:
            raise Invalid(f"max tokens must be between 1 and {MAX_TOKENS}, not {self.max_tokens}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise Invalid(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, not {self.temperature:g}")

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]


@dataclass
class Reply:
    """One endpoint's answer, or why there is none."""

    endpoint: str
    model: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def check_endpoints(urls: list[str]) -> list[str]:
    """Two endpoint base URLs (``.../v1`` or the server's root), without a trailing slash."""
    if len(urls) != 2:
        raise Invalid("choose two endpoints")
    checked = [check_url(u, f"endpoint {side}").rstrip("/") for side, u in zip("AB", urls, strict=True)]
    return [u[: -len("/v1")] if u.endswith("/v1") else u for u in checked]


async def ask_one(client: httpx.AsyncClient, endpoint: str, ask: Ask) -> Reply:
    """The model the endpoint serves (its first), then one chat completion from it."""
    reply = Reply(endpoint)
    start = time.monotonic()
    try:
        listed = (await client.get(f"{endpoint}/v1/models")).raise_for_status().json()
        models = [m["id"] for m in listed.get("data") or []]
        if not models:
            raise ValueError("the endpoint serves no model")
        reply.model = models[0]
        answer = await client.post(f"{endpoint}/v1/chat/completions", json={
            "model": reply.model, "messages": ask.messages(), "max_tokens": ask.max_tokens,
            "temperature": ask.temperature,
        })
        body = answer.json()
        if answer.status_code != 200:
            message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
            raise ValueError(f"HTTP {answer.status_code}: {message or answer.text[:300]}")
        choice = body["choices"][0]
        reply.text, reply.finish_reason = choice["message"]["content"], choice.get("finish_reason")
        reply.usage = body.get("usage") or {}
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, KeyError, IndexError, TypeError) as exc:
        reply.error = (str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}")[:500]
    reply.seconds = round(time.monotonic() - start, 2)
    return reply


async def side_by_side(endpoints: list[str], ask: Ask, *, timeout_s: float) -> list[Reply]:
    """The same prompt to both endpoints at once; a failing side carries its error."""
    urls = check_endpoints(endpoints)
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        return list(await asyncio.gather(*(ask_one(client, url, ask) for url in urls)))
