"""`rlhf policy serve vN`: the official OpenAI client against the tiny policy, plain and streaming."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rlhf(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=180, **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`rlhf policy serve v0` on a tiny bootstrapped policy, as a user starts it; yields the base URL."""
    data = tmp_path_factory.mktemp("serve")
    env = {"RLHF_DATA_DIR": str(data), "RLHF_DATABASE_URL": f"sqlite:///{data / 'rlhf.db'}",
           "RLHF_ARTIFACTS_DIR": str(data / "artifacts")}
    for args in (["db", "upgrade"], ["policy", "bootstrap", "--base", "tiny"]):
        r = _rlhf(args, env)
        assert r.returncode == 0, r.stderr
    port = _free_port()
    log = open(data / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "policy", "serve", "v0", "--port", str(port)],
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (data / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _client(base: str):  # noqa: ANN202
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_version(served: str) -> None:
    models = _client(served).models.list()
    assert [m.id for m in models.data] == ["v0"]


def test_chat_completion_plain(served: str) -> None:
    client = _client(served)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    out = client.chat.completions.create(model="v0", messages=messages, max_tokens=12, temperature=0.8, seed=3, n=2)
    assert out.object == "chat.completion" and out.model == "v0" and len(out.choices) == 2
    for choice in out.choices:
        assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
        assert choice.finish_reason in ("stop", "length")
    assert out.usage is not None and 0 < out.usage.completion_tokens <= 24
    again = client.chat.completions.create(model="v0", messages=messages, max_tokens=12, temperature=0.8, seed=3, n=2)
    assert [c.message.content for c in again.choices] == [c.message.content for c in out.choices]  # seeded
    greedy = client.chat.completions.create(model="v0", messages=messages, max_tokens=200, temperature=0)
    assert greedy.choices[0].finish_reason in ("stop", "length")


def test_chat_completion_streaming_matches_plain(served: str) -> None:
    client = _client(served)
    messages = [{"role": "user", "content": "Write a short poem about the sea"}]
    plain = client.chat.completions.create(model="v0", messages=messages, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="v0", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len(chunks) >= 3
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_stop_strings_and_errors(served: str) -> None:
    client = _client(served)
    messages = [{"role": "user", "content": "Say hello"}]
    full = client.chat.completions.create(model="v0", messages=messages, max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    if len(text) > 4:
        stop = text[2:4]
        cut = client.chat.completions.create(model="v0", messages=messages, max_tokens=20, temperature=0, stop=[stop])
        assert cut.choices[0].message.content == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="v0", messages=messages, max_tokens=20, temperature=0, stop=stop, stream=True))
        assert streamed == cut.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="v9", messages=messages)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="v0", messages=messages, stream=True, n=2)


def test_the_served_prompt_is_the_sampler_prompt(tiny_policy_dir: Path) -> None:
    """The endpoint renders through trainer/prompting.py exactly as the labelers' sampler does."""
    from trainer.generation import GenRequest, encode_request
    from trainer.serve import ChatRequest, PolicyServer

    server = PolicyServer(tiny_policy_dir, "v0", device="cpu")
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "again"}]
    request = ChatRequest(model="v0", messages=messages)
    assert server.prompt_ids(request, 16) == list(encode_request(server.tokenizer, GenRequest(key=1, messages=messages)))
