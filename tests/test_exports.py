"""Exports: the formats of shared/design.md, filters, CSV safety, constant memory, and that
`datasets` and TRL's RewardTrainer read the files as they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from app.models import AuditLog, Completion, Prompt, Ranking, Task
from app.models.base import utcnow
from app.services import exports
from app.services.users import create_user
from tests.admin_helpers import add_demonstration, add_ranking
from tests.factories import make_completions, make_policy, make_prompt_set, make_prompts


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _comps(db, prompt: Prompt) -> list[int]:  # type: ignore[no-untyped-def]
    return list(db.scalars(select(Completion.id).where(Completion.prompt_id == prompt.id).order_by(Completion.id)))


@pytest.fixture
def data(database, make_account):  # type: ignore[no-untyped-def]
    """Set 'exp' (K=4): a full ranking by alice on a train prompt, a ranking with a tie by bob
    on a validation prompt, a gold prompt ranked by alice, a chat prompt, and demonstrations."""
    alice = make_account("labeler", "alice")
    bob = make_account("labeler", "bob")
    with database.session() as db:
        ps = make_prompt_set(db, "exp", k=4)
        train, gold_p = make_prompts(db, ps, ["Name a fruit.", "Gold prompt?"], split="train")
        (val,) = make_prompts(db, ps, ["Name a colour."], split="validation")
        chat = Prompt(
            prompt_set_id=ps.id, split="train", content_hash="chat-hash",
            messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi?"}],
        )
        db.add(chat)
        db.flush()
        v0 = make_policy(db)
        make_completions(db, train, v0, 4, ["apple", "=1+1", "pear", "plum"])
        make_completions(db, val, v0, 4, ["red", "blue", "green", "grey"])
        make_completions(db, gold_p, v0, 4)
        v1 = make_policy(db)
        make_completions(db, chat, v1, 2, ["Hello.", "Hey there, friend!"])
        a, b, c, d = _comps(db, train)
        r_full = add_ranking(db, train, alice.id, [[a], [b], [c], [d]], ratings={str(a): {"likert": 7}})
        a, b, c, d = _comps(db, val)
        r_tie = add_ranking(db, val, bob.id, [[b], [a, c], [d]])
        g = _comps(db, gold_p)
        gold_p.is_gold, gold_p.gold_ranking = True, [[x] for x in g]
        add_ranking(db, gold_p, alice.id, [[x] for x in g])
        h1, h2 = _comps(db, chat)
        add_ranking(db, chat, bob.id, [[h2], [h1]])
        add_demonstration(db, train, alice.id, "A banana.")
        add_demonstration(db, chat, bob.id, "Hi!")
        return {
            "set_id": ps.id, "full": r_full.id, "tie": r_tie.id, "train": train.id, "v0": v0.id, "v1": v1.id,
            "alice": alice, "bob": bob,
        }


def test_comparisons_k4_gives_6_pairs_and_a_tie_removes_its_pair(client, admin, data) -> None:
    r = client.get(f"/api/v1/exports/comparisons.jsonl?prompt_set_id={data['set_id']}", headers=admin.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert 'filename="comparisons-set' in r.headers["content-disposition"]
    rows = _lines(r.text)
    full = [x for x in rows if x["ranking_id"] == data["full"]]
    tie = [x for x in rows if x["ranking_id"] == data["tie"]]
    assert len(full) == 6 and len(tie) == 5  # K=4: 6 pairs; a tie of two removes one
    assert {(x["chosen"], x["rejected"]) for x in full} == {
        ("apple", "=1+1"), ("apple", "pear"), ("apple", "plum"), ("=1+1", "pear"), ("=1+1", "plum"), ("pear", "plum")
    }
    first = next(x for x in full if x["chosen"] == "apple" and x["rejected"] == "plum")
    assert first == {
        "prompt": "Name a fruit.", "chosen": "apple", "rejected": "plum", "prompt_id": data["train"],
        "ranking_id": data["full"], "labeler": "alice", "chosen_rank": 1, "rejected_rank": 4, "policy": 0,
        "split": "train",
    }
    # [[blue], [red, green], [grey]]: red and green are tied, so their pair is gone.
    assert {(x["chosen"], x["rejected"]) for x in tie} == {
        ("blue", "red"), ("blue", "green"), ("blue", "grey"), ("red", "grey"), ("green", "grey")
    }
    assert not any({x["chosen"], x["rejected"]} == {"red", "green"} for x in tie)
    assert all(x["prompt"] != "Gold prompt?" for x in rows)  # gold is left out by default
    chat = [x for x in rows if x["policy"] == 1]
    assert chat == [{**chat[0], "prompt": "Hi?", "chosen": "Hey there, friend!", "rejected": "Hello."}]


def test_tie_pair_count(client, admin, data) -> None:
    rows = _lines(client.get("/api/v1/exports/comparisons.jsonl?split=validation", headers=admin.headers).text)
    assert len(rows) == 5 and {x["split"] for x in rows} == {"validation"}
    assert sorted((x["chosen_rank"], x["rejected_rank"]) for x in rows) == [(1, 2), (1, 2), (1, 3), (2, 3), (2, 3)]


def test_conversational_format(client, admin, data) -> None:
    rows = _lines(
        client.get("/api/v1/exports/comparisons.jsonl?format=conversational", headers=admin.headers).text
    )
    plain = next(x for x in rows if x["ranking_id"] == data["full"])
    assert plain["prompt"] == [{"role": "user", "content": "Name a fruit."}]
    assert plain["chosen"][0] == {"role": "assistant", "content": plain["chosen"][0]["content"]}
    chat = next(x for x in rows if x["policy"] == 1)
    assert chat["prompt"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi?"}]
    assert chat["chosen"] == [{"role": "assistant", "content": "Hey there, friend!"}]
    demos = _lines(client.get("/api/v1/exports/demonstrations.jsonl?format=conversational", headers=admin.headers).text)
    assert {json.dumps(d["completion"]) for d in demos} == {
        json.dumps([{"role": "assistant", "content": "A banana."}]), json.dumps([{"role": "assistant", "content": "Hi!"}])
    }


def test_rankings_and_demonstrations(client, admin, data) -> None:
    rows = _lines(client.get("/api/v1/exports/rankings.jsonl", headers=admin.headers).text)
    assert len(rows) == 3  # gold left out
    full = next(x for x in rows if x["ranking_id"] == data["full"])
    assert full["completions"] == ["apple", "=1+1", "pear", "plum"]
    assert full["ranking"] == [[0], [1], [2], [3]] and full["ratings"] == {"0": {"likert": 7}}
    assert full["labeler"] == "alice" and full["prompt"] == "Name a fruit." and full["all_unacceptable"] is False
    tie = next(x for x in rows if x["ranking_id"] == data["tie"])
    assert tie["completions"] == ["red", "blue", "green", "grey"] and tie["ranking"] == [[1], [0, 2], [3]]
    demos = _lines(client.get("/api/v1/exports/demonstrations.jsonl", headers=admin.headers).text)
    assert sorted((d["prompt"], d["completion"], d["labeler"]) for d in demos) == [
        ("Hi?", "Hi!", "bob"), ("Name a fruit.", "A banana.", "alice")
    ]
    assert set(demos[0]) == {"prompt", "completion", "prompt_id", "demonstration_id", "labeler", "split"}


def test_filters(client, admin, data, database) -> None:
    def count(query: str, kind: str = "comparisons") -> int:
        r = client.get(f"/api/v1/exports/{kind}.jsonl?{query}", headers=admin.headers)
        assert r.status_code == 200, r.text
        return len(_lines(r.text))

    assert count("") == 6 + 5 + 1
    assert count("include_gold=true") == 6 + 5 + 1 + 6
    assert count("labeler=alice") == 6 and count("labeler=bob") == 6 and count("labeler=nobody") == 0
    assert count(f"policy_id={data['v1']}") == 1 and count(f"policy_id={data['v0']}") == 11
    assert count("split=train") == 7
    assert count(f"prompt_set_id={data['set_id'] + 100}") == 0
    now = utcnow()
    with database.session() as db:
        old = db.get(Ranking, data["full"])
        old.created_at = now - timedelta(days=10)
    since = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert count(f"since={since}") == 6
    assert count(f"until={since}") == 6 and count(f"until={since}", "rankings") == 1
    assert count(f"policy_id={data['v0']}", "demonstrations") == 0
    r = client.get(f"/api/v1/exports/comparisons.jsonl?since={since}&until={since}", headers=admin.headers)
    assert r.status_code == 422
    assert client.get("/api/v1/exports/nonsense.jsonl", headers=admin.headers).status_code == 422
    assert client.get("/api/v1/exports/comparisons.xml", headers=admin.headers).status_code == 422


def test_csv_variants_neutralise_formulas(client, admin, data) -> None:
    r = client.get("/api/v1/exports/comparisons.csv", headers=admin.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0] == ",".join(exports.COLUMNS["comparisons"])
    assert "'=1+1" in r.text and ",=1+1" not in r.text
    assert len(lines) == 1 + 12
    r = client.get("/api/v1/exports/rankings.csv?format=conversational", headers=admin.headers)
    assert r.status_code == 200 and '""role"": ""user""' in r.text
    assert exports.csv_cell("@SUM(A1)") == "'@SUM(A1)" and exports.csv_cell("-2") == "'-2"
    assert exports.csv_cell(3) == 3 and exports.csv_cell(None) == ""


def test_exports_are_admin_only(client, labeler) -> None:
    assert client.get("/api/v1/exports/comparisons.jsonl", headers=labeler.headers).status_code == 403
    assert client.get("/api/v1/exports/comparisons.jsonl").status_code == 401


def test_files_load_with_datasets(client, admin, data, tmp_path) -> None:
    import datasets

    for kind in exports.KINDS:
        for fmt in ("standard", "conversational"):
            path = tmp_path / f"{kind}-{fmt}.jsonl"
            path.write_bytes(client.get(f"/api/v1/exports/{kind}.jsonl?format={fmt}", headers=admin.headers).content)
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
            assert len(ds) > 0
            assert {"prompt"} <= set(ds.column_names)
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "comparisons-standard.jsonl"), split="train")
    assert len(ds) == 12 and ds[0]["chosen"] and ds[0]["rejected"]


def test_trl_reward_trainer_accepts_the_comparisons_file(client, admin, data, tmp_path) -> None:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from trainer.tiny import build_tiny_policy

    model_dir = build_tiny_policy(tmp_path / "tiny", hidden_size=32, num_layers=1)
    for fmt in ("standard", "conversational"):
        path = tmp_path / f"comparisons-{fmt}.jsonl"
        path.write_bytes(client.get(f"/api/v1/exports/comparisons.jsonl?format={fmt}", headers=admin.headers).content)
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        args = RewardConfig(
            output_dir=str(tmp_path / f"rm-{fmt}"), max_steps=2, per_device_train_batch_size=4,
            report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, max_length=128,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        result = trainer.train()
        assert result.global_step == 2 and result.training_loss > 0


def _bulk(database, n_rankings: int) -> int:
    """n rankings of K=4 (6 pairs each) inserted in bulk, for the memory test."""
    with database.session() as db:
        ps = make_prompt_set(db, "bulk", k=4)
        labeler = create_user(db, "bulk-labeler", "long-enough-pw")
        policy = make_policy(db)
        now = utcnow()
        prompts = make_prompts(db, ps, [f"bulk prompt {i} " + "x" * 80 for i in range(n_rankings)])
        db.execute(
            insert(Completion),
            [
                {"prompt_id": p.id, "policy_id": policy.id, "text": f"answer {j} to {p.id} " + "y" * 100}
                for p in prompts for j in range(4)
            ],
        )
        comps: dict[int, list[int]] = {}
        for pid, cid in db.execute(select(Completion.prompt_id, Completion.id).order_by(Completion.id)):
            comps.setdefault(pid, []).append(cid)
        db.execute(
            insert(Task),
            [
                {"prompt_id": p.id, "prompt_set_id": ps.id, "labeler_id": labeler.id, "kind": "rank",
                 "status": "submitted", "completion_ids": comps[p.id], "lease_expires_at": now}
                for p in prompts
            ],
        )
        tasks = dict(db.execute(select(Task.prompt_id, Task.id)).all())
        db.execute(
            insert(Ranking),
            [
                {"task_id": tasks[p.id], "prompt_id": p.id, "labeler_id": labeler.id,
                 "ranking": [[c] for c in comps[p.id]], "payload_hash": str(p.id)}
                for p in prompts
            ],
        )
        return ps.id


def test_export_streams_in_constant_memory(database) -> None:
    set_id = _bulk(database, 3000)
    flt = exports.ExportFilter(prompt_set_id=set_id)
    with database.sessionmaker() as db:
        gen = exports.stream(db, "comparisons", "jsonl", flt, batch=100)
        first = next(gen)  # lazy: the first chunk comes before the rest is read
        assert first
        tracemalloc.start()
        total = len(first)
        for chunk in gen:
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert total > 5_000_000  # 18,000 lines of about 300 bytes
    # Memory follows the batch (100 rankings), not the 3,000 rankings of the export: holding
    # every row as Python objects would take more than the output's size.
    assert peak < total / 5, f"peak {peak} bytes for {total} bytes of output"


def _rlhf(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


def test_cli_export(db_url, data, tmp_path) -> None:
    env = {"RLHF_DATABASE_URL": db_url, "RLHF_DATA_DIR": str(tmp_path)}
    out = tmp_path / "pairs.jsonl"
    r = _rlhf(["export", "comparisons", "--set", "exp", "--out", str(out)], env)
    assert r.returncode == 0, r.stderr
    assert "wrote 12 comparisons row(s)" in r.stderr
    rows = _lines(out.read_text())
    assert len(rows) == 12 and not Path(str(out) + ".part").exists()
    r = _rlhf(["export", "demonstrations", "--set", "exp", "--out", str(tmp_path / "d.csv"), "--format", "csv"], env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d.csv").read_text().splitlines()[0] == ",".join(exports.COLUMNS["demonstrations"])
    r = _rlhf(["export", "rankings", "--set", "exp", "--format", "conversational", "--policy", "1"], env)
    assert r.returncode == 0 and len(_lines(r.stdout)) == 1
    r = _rlhf(["export", "pairs", "--set", "exp", "--out", str(out)], env)
    assert r.returncode == 1 and "unknown export 'pairs'" in r.stderr
    r = _rlhf(["export", "comparisons", "--set", "nope", "--out", str(out)], env)
    assert r.returncode == 1 and "no prompt set named 'nope'" in r.stderr


def test_downloads_are_in_the_audit_log(client, admin, data, database) -> None:
    client.get(f"/api/v1/exports/rankings.csv?prompt_set_id={data['set_id']}&split=train", headers=admin.headers)
    with database.session() as db:
        entry = db.scalar(select(AuditLog).where(AuditLog.action == "export.download"))
    assert entry.actor_id == admin.id and entry.target_id == "rankings.csv"
    assert entry.detail == {"conversational": False, "prompt_set_id": data["set_id"], "split": "train"}


def test_a_record_stays_one_line_whatever_the_text_holds(client, admin, data, database) -> None:
    """Sampled text may hold U+2028, U+2029 or NEL, which JSON leaves raw but str.splitlines
    (and older JavaScript) reads as line breaks: the export writes them escaped."""
    odd = "plum\u2028pie\u2029tart\x85end"
    with database.session() as db:
        db.execute(update(Completion).where(Completion.text == "plum").values(text=odd))
        db.commit()
    for kind, n in (("rankings", 3), ("comparisons", None)):
        text = client.get(f"/api/v1/exports/{kind}.jsonl", headers=admin.headers).text
        assert all(ch not in text for ch in "\u2028\u2029\x85")
        rows = [json.loads(line) for line in text.splitlines()]
        assert n is None or len(rows) == n
        assert any(odd in json.dumps(r, ensure_ascii=False) for r in rows)
