"""Exports of a conversation set in TRL's conversational format: comparisons share the
conversation so far as ``prompt`` with one assistant message as ``chosen`` / ``rejected``,
rankings hold the context and K replies, demonstrations are ``messages`` ending with the
written reply. ``datasets`` loads the files as they are, and TRL's RewardTrainer and
SFTTrainer accept them."""

from __future__ import annotations

import json

import pytest

from app.services import exports

from tests.conversation_helpers import context_prompt_ids, deploy_chat_policy, sample_replies

SEED = "Suggest a name for a cat."


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _next(client, account, set_id: int, kind: str) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": kind}, headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def two_turns(client, database, admin, make_account, settings):  # type: ignore[no-untyped-def]
    """A conversation of two user turns: the seed's 3 replies ranked, the best continued,
    the new context's 3 replies ranked (a tie in the middle) and a reply written for it."""
    deploy_chat_policy(database, settings.resolved_artifacts_dir)
    ps = client.post(
        "/api/v1/prompt-sets",
        json={"name": "cats", "k": 3, "kind": "conversation", "demonstration_share": 1.0},
        headers=admin.headers,
    ).json()
    client.post(f"/api/v1/prompt-sets/{ps['id']}/prompts", json={"prompts": [{"prompt": SEED}]}, headers=admin.headers)
    a, b, c = make_account(), make_account(), make_account()
    seed = context_prompt_ids(database, ps["id"])[0]
    first = sample_replies(database, seed, ["Whiskers.", "Cat.", "Mr. Mittens."])
    task = _next(client, a, ps["id"], "rank")
    client.post(f"/api/v1/tasks/{task['id']}/ranking", json={"ranking": [[first[2]], [first[0]], [first[1]]]},
                headers=a.headers)
    cont = _next(client, b, ps["id"], "continue")
    node = client.post(f"/api/v1/tasks/{cont['id']}/continuation", json={"text": "Something shorter?"},
                       headers=b.headers).json()
    second = sample_replies(database, node["prompt_id"], ["Tom.", "Max.", "Bo."])
    task = _next(client, c, ps["id"], "rank")
    assert task["prompt_id"] == node["prompt_id"]
    client.post(f"/api/v1/tasks/{task['id']}/ranking", json={"ranking": [[second[2]], [second[0], second[1]]]},
                headers=c.headers)
    demo = _next(client, a, ps["id"], "demonstrate")
    if demo["prompt_id"] != node["prompt_id"]:  # the seed wants a demonstration too; write both
        client.post(f"/api/v1/tasks/{demo['id']}/demonstration", json={"text": "Luna."}, headers=a.headers)
        demo = _next(client, a, ps["id"], "demonstrate")
    assert demo["prompt_id"] == node["prompt_id"]
    r = client.post(f"/api/v1/tasks/{demo['id']}/demonstration", json={"text": "Pip."}, headers=a.headers)
    assert r.status_code == 201
    return {"set_id": ps["id"], "second_context": node["prompt_id"]}


def _get(client, admin, kind: str, set_id: int, fmt: str = "conversational") -> str:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/exports/{kind}.jsonl?format={fmt}&prompt_set_id={set_id}", headers=admin.headers)
    assert r.status_code == 200, r.text
    return r.text


def test_conversational_exports_carry_the_whole_context(client, admin, two_turns) -> None:
    context = [
        {"role": "user", "content": SEED},
        {"role": "assistant", "content": "Mr. Mittens."},
        {"role": "user", "content": "Something shorter?"},
    ]
    pairs = _lines(_get(client, admin, "comparisons", two_turns["set_id"]))
    second = [p for p in pairs if p["prompt_id"] == two_turns["second_context"]]
    assert len(pairs) == 3 + 2 and len(second) == 2  # 3 pairs, then 3 less the tie
    assert all(p["prompt"] == context for p in second)
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in second} == {("Bo.", "Tom."), ("Bo.", "Max.")}
    assert all(p["chosen"][0]["role"] == "assistant" and len(p["chosen"]) == 1 for p in pairs)

    rankings = _lines(_get(client, admin, "rankings", two_turns["set_id"]))
    turn2 = next(r for r in rankings if r["prompt_id"] == two_turns["second_context"])
    assert turn2["prompt"] == context and [c[0]["content"] for c in turn2["completions"]] == ["Tom.", "Max.", "Bo."]
    assert turn2["ranking"] == [[2], [0, 1]]

    demos = _lines(_get(client, admin, "demonstrations", two_turns["set_id"]))
    written = next(d for d in demos if d["prompt_id"] == two_turns["second_context"])
    assert set(written) == {"messages", "prompt_id", "demonstration_id", "labeler", "split"}
    assert written["messages"] == [*context, {"role": "assistant", "content": "Pip."}]
    # the standard form stays prompt/completion strings
    plain = _lines(_get(client, admin, "demonstrations", two_turns["set_id"], "standard"))
    assert {d["completion"] for d in plain} >= {"Pip."} and all(isinstance(d["prompt"], str) for d in plain)
    csv = client.get(f"/api/v1/exports/demonstrations.csv?format=conversational&prompt_set_id={two_turns['set_id']}",
                     headers=admin.headers).text
    # CSV keeps its fixed columns: the context as prompt, the reply as completion
    assert csv.splitlines()[0] == ",".join(exports.COLUMNS["demonstrations"])
    assert '""content"": ""Pip.""' in csv and '""content"": ""Something shorter?""' in csv


def test_datasets_and_trl_take_the_files_as_they_are(client, admin, two_turns, tmp_path) -> None:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    from trainer.tiny import build_tiny_policy

    files = {}
    for kind in ("comparisons", "rankings", "demonstrations"):
        path = tmp_path / f"{kind}.jsonl"
        path.write_text(_get(client, admin, kind, two_turns["set_id"]), encoding="utf-8")
        files[kind] = datasets.load_dataset("json", data_files=str(path), split="train")
        assert len(files[kind]) > 0
    assert set(files["demonstrations"].column_names) == {"messages", "prompt_id", "demonstration_id", "labeler", "split"}
    assert {"prompt", "chosen", "rejected"} <= set(files["comparisons"].column_names)

    model_dir = build_tiny_policy(tmp_path / "tiny", hidden_size=32, num_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"), max_steps=2, per_device_train_batch_size=2, report_to=[],
        save_strategy="no", logging_steps=1, use_cpu=True, max_length=256,
    )
    result = RewardTrainer(model=rm, args=args, train_dataset=files["comparisons"], processing_class=tokenizer).train()
    assert result.global_step == 2 and result.training_loss > 0

    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    sft_args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2, report_to=[],
        save_strategy="no", logging_steps=1, use_cpu=True, max_length=256,
    )
    result = SFTTrainer(
        model=policy, args=sft_args, train_dataset=files["demonstrations"], processing_class=tokenizer
    ).train()
    assert result.global_step == 2 and result.training_loss > 0
