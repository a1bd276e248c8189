"""The Playground page against real `rlhf policy serve` endpoints (trainer/serve.py on the
tiny model, two servers in threads), and the rule that the web tier never imports torch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import login
from tests.live_server import serve_in_thread

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def endpoints(tiny_base: Path) -> Iterator[list[str]]:
    """Two OpenAI-compatible endpoints, serving the tiny policy as ``v0`` and as ``v1``."""
    import torch

    from trainer.serve import PolicyServer, create_app

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with serve_in_thread(create_app(PolicyServer(tiny_base, "v0")), 60) as a, \
            serve_in_thread(create_app(PolicyServer(tiny_base, "v1")), 60) as b:
        yield [a, b]
    torch.set_num_threads(previous)


def test_the_web_tier_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from app.main import create_app\n"
        "import app.services.playground, app.services.webhook_delivery, app.routes.pages.playground\n"
        "create_app()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'accelerate'))\n"
        "assert not loaded, loaded\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent, env={"RLHF_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr


def test_one_prompt_to_two_versions_side_by_side(client, admin, endpoints) -> None:
    csrf = login(client, "admin")
    page = client.get("/admin/playground")
    assert page.status_code == 200 and "Send to both" in page.text
    form = {"csrf_token": csrf, "action": "ask", "endpoint_a": endpoints[0], "endpoint_b": f"{endpoints[1]}/v1/",
            "prompt": "Say <b>hello</b>", "system": "Be brief.", "max_tokens": "8", "temperature": "0.8"}
    assert client.post("/admin/playground", data={**form, "csrf_token": "forged"}).status_code == 403
    r = client.post("/admin/playground", data=form)
    assert r.status_code == 200, r.text
    assert 'data-side="A"' in r.text and 'data-side="B"' in r.text
    assert "A: v0" in r.text and "B: v1" in r.text and 'role="alert"' not in r.text
    assert r.text.count('<pre class="reply-text">') == 2 and "tokens" in r.text
    assert "Say &lt;b&gt;hello&lt;/b&gt;" in r.text  # the prompt comes back in the form, escaped


def test_a_side_that_cannot_answer_shows_why(client, admin, endpoints) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    csrf = login(client, "admin")
    r = client.post("/admin/playground", data={"csrf_token": csrf, "endpoint_a": endpoints[0], "endpoint_b": down,
                                               "prompt": "Hi", "max_tokens": "4"})
    assert r.status_code == 200 and "A: v0" in r.text and "ConnectError" in r.text
    for bad, says in [({"prompt": "  "}, "write a prompt"), ({"max_tokens": "0"}, "max tokens must be between"),
                      ({"endpoint_b": "file:///etc/passwd"}, "endpoint B must be an absolute"),
                      ({"temperature": "hot"}, "temperature must be a number")]:
        body = {"csrf_token": csrf, "endpoint_a": endpoints[0], "endpoint_b": endpoints[1], "prompt": "Hi", **bad}
        r = client.post("/admin/playground", data=body)
        assert r.status_code == 422 and says in r.text, (bad, r.text[-500:])
