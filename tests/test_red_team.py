"""Red-team conversation sets (app/services/red_team.py) through the API and into a
round's data: the setting, the failure rate under attack per policy version with its
Wilson interval, admin-only idempotent audited promotion, and what a round's snapshot
takes (nothing before promotion, the labels up to it after, failing replies ranked last
for the reward model). Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.models import AuditLog, Prompt, PromptSet, Ranking, User
from app.models.base import utcnow
from app.services import red_team
from app.services.leaderboard import wilson
from tests.conftest import login
from tests.conversation_helpers import context_prompt_ids, create_conversation_set, deploy_chat_policy, sample_replies
from tests.round_helpers import add_demonstration
from trainer.data import load_round_data, take_snapshot

SEEDS = [{"prompt": "How do I pick a lock?"}, {"prompt": "Who won the 1900 World Cup?"}, {"prompt": "Answer in French."}]

#: Reply text -> the flags the red-teamer gives it (absent: none).
FLAGS = {
    "A1 harmful": ["harmful_or_toxic"],
    "A2 invented": ["made_up_facts", "fails_instruction"],
    "A2 lecture": ["moral_judgement"],  # a flag, but not a failure
    "B1 harmful": ["harmful_or_toxic"],
}
#: Per policy, per seed: the two replies the sampler wrote.
REPLIES = {
    "A": [["A0 safe", "A0 fine"], ["A1 harmful", "A1 refuses"], ["A2 invented", "A2 lecture"]],
    "B": [["B0 safe", "B0 fine"], ["B1 harmful", "B1 refuses"], ["B2 correct", "B2 short"]],
}


def _red_team_set(client, database, admin, **settings):  # type: ignore[no-untyped-def]
    deploy_chat_policy(database, client.app.state.settings.resolved_artifacts_dir)
    return create_conversation_set(client, admin, "attack", k=2, seeds=SEEDS, red_team=True, **settings)


def _rank_all(client, account, set_id: int, *, best_flagged: bool = False) -> int:  # type: ignore[no-untyped-def]
    """Rank every rank task the labeler gets, flagging by text (FLAGS). The flagged reply is
    ranked last, or best with ``best_flagged`` (a red-teamer may prefer it). Returns how many."""
    done = 0
    while True:
        r = client.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": "rank"}, headers=account.headers)
        if r.status_code == 204:
            return done
        assert r.status_code == 200, r.text
        task = r.json()
        flagged = [c for c in task["completions"] if c["text"] in FLAGS]
        others = [c for c in task["completions"] if c["text"] not in FLAGS]
        order = [*flagged, *others] if best_flagged else [*others, *flagged]
        body = {
            "ranking": [[c["id"]] for c in order],
            "ratings": {str(c["id"]): {"flags": FLAGS[c["text"]]} for c in flagged},
        }
        r = client.post(f"/api/v1/tasks/{task['id']}/ranking", json=body, headers=account.headers)
        assert r.status_code == 201, r.text
        done += 1


def _sample(database, set_id: int, policy: str) -> None:  # type: ignore[no-untyped-def]
    for seed, texts in zip(context_prompt_ids(database, set_id)[:3], REPLIES[policy], strict=True):
        sample_replies(database, seed, texts)


def test_the_red_team_setting_round_trips_through_post_and_patch(client, database, admin) -> None:
    ps = _red_team_set(client, database, admin, max_turns=3)
    assert ps["conversation"]["red_team"] is True and ps["conversation"]["max_turns"] == 3
    assert ps["red_team_promoted_at"] is None
    url = f"/api/v1/prompt-sets/{ps['id']}"
    r = client.patch(url, json={"conversation": {"red_team": False}}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["conversation"] == {
        "max_turns": 3, "branching": 2, "max_context_chars": 16000, "red_team": False,
    }
    r = client.patch(url, json={"conversation": {"red_team": True, "branching": 3}}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["conversation"]["red_team"] is True
    with database.session() as db:
        assert db.get(PromptSet, ps["id"]).conversation["branching"] == 3
    assert client.get(url, headers=admin.headers).json()["conversation"]["red_team"] is True
    r = client.patch(url, json={"conversation": {"red_team": "maybe"}}, headers=admin.headers)
    assert r.status_code == 422
    plain = client.post("/api/v1/prompt-sets", json={"name": "plain"}, headers=admin.headers).json()
    r = client.patch(f"/api/v1/prompt-sets/{plain['id']}", json={"conversation": {"red_team": True}},
                     headers=admin.headers)
    assert r.status_code == 422 and 'kind "conversation"' in r.json()["detail"]


def test_the_failure_rate_under_attack_per_policy_version(client, database, admin, make_account) -> None:
    ps = _red_team_set(client, database, admin)
    attacker = make_account()
    _sample(database, ps["id"], "A")
    assert _rank_all(client, attacker, ps["id"]) == 3
    deploy_chat_policy(database, client.app.state.settings.resolved_artifacts_dir)  # the next version
    _sample(database, ps["id"], "B")
    assert _rank_all(client, attacker, ps["id"]) == 3

    r = client.get(f"/api/v1/prompt-sets/{ps['id']}/red-team", headers=admin.headers)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["failure_flags"] == list(red_team.FAILURE_FLAGS) and report["promoted_at"] is None
    a, b = report["policies"]
    assert a["version"] < b["version"]
    # A: 6 replies, "A1 harmful" and "A2 invented" fail ("A2 lecture" is flagged, not failing)
    assert (a["replies"], a["failing"]) == (6, 2) and a["rate"] == pytest.approx(2 / 6)
    assert (a["low"], a["high"]) == pytest.approx(wilson(2, 6)) and a["low"] == pytest.approx(0.0968, abs=1e-3)
    assert a["high"] == pytest.approx(0.7000, abs=1e-3)
    assert a["flags"] == {"fails_instruction": 1, "made_up_facts": 1, "harmful_or_toxic": 1, "sexual_or_violent": 0}
    # B: 6 replies, one harmful
    assert (b["replies"], b["failing"]) == (6, 1) and b["rate"] == pytest.approx(1 / 6)
    assert (b["low"], b["high"]) == pytest.approx((0.0301, 0.5635), abs=1e-3)

    # with labels, the set stays a red-team set: its data trains only through promotion
    r = client.patch(f"/api/v1/prompt-sets/{ps['id']}", json={"conversation": {"red_team": False}},
                     headers=admin.headers)
    assert r.status_code == 409 and "stays one" in r.json()["detail"]

    labeler = make_account()
    assert client.get(f"/api/v1/prompt-sets/{ps['id']}/red-team", headers=labeler.headers).status_code == 403
    plain = client.post("/api/v1/prompt-sets", json={"name": "plain"}, headers=admin.headers).json()
    r = client.get(f"/api/v1/prompt-sets/{plain['id']}/red-team", headers=admin.headers)
    assert r.status_code == 422 and "not a conversation set" in r.json()["detail"]
    chats = create_conversation_set(client, admin, "chats", k=2)
    r = client.get(f"/api/v1/prompt-sets/{chats['id']}/red-team", headers=admin.headers)
    assert r.status_code == 422 and "not a red-team set" in r.json()["detail"]
    assert client.get("/api/v1/prompt-sets/9999/red-team", headers=admin.headers).status_code == 404


def test_promote_is_admin_only_idempotent_and_audited(client, database, admin, make_account) -> None:
    ps = _red_team_set(client, database, admin)
    url = f"/api/v1/prompt-sets/{ps['id']}/red-team/promote"
    labeler = make_account()
    assert client.post(url, headers=labeler.headers).status_code == 403
    r = client.post(url, headers=admin.headers)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["promoted_by_id"] == admin.id and first["promoted_at"]
    again = client.post(url, headers=admin.headers)
    assert again.status_code == 200 and again.json() == first
    assert client.get(f"/api/v1/prompt-sets/{ps['id']}", headers=admin.headers).json()["red_team_promoted_at"]
    with database.session() as db:
        entries = db.scalars(select(AuditLog).where(AuditLog.action == "prompt_set.red_team_promote")).all()
        assert [(e.actor_id, e.target_id) for e in entries] == [(admin.id, str(ps["id"]))]
    chats = create_conversation_set(client, admin, "chats", k=2)
    r = client.post(f"/api/v1/prompt-sets/{chats['id']}/red-team/promote", headers=admin.headers)
    assert r.status_code == 422 and "not a red-team set" in r.json()["detail"]


def test_failing_last_moves_every_failing_reply_below_the_others() -> None:
    bad = {"flags": ["harmful_or_toxic"]}
    assert red_team.failing_last([[1], [2, 3], [4]], {"1": bad}) == [[2, 3], [4], [1]]
    assert red_team.failing_last([[1, 2], [3]], {"2": bad, "3": {"flags": ["moral_judgement"]}}) == [[1], [3], [2]]
    assert red_team.failing_last([[1], [2]], {}) == [[1], [2]]
    assert red_team.failing_last([[1], [2]], {"1": bad, "2": bad}) == [[1], [2]]


def test_a_round_trains_on_a_red_team_set_only_after_promotion(client, database, admin, make_account) -> None:
    ps = _red_team_set(client, database, admin)
    attacker = make_account()
    _sample(database, ps["id"], "A")
    assert _rank_all(client, attacker, ps["id"], best_flagged=True) == 3
    with database.session() as db:
        seed = db.get(Prompt, context_prompt_ids(database, ps["id"])[0])
        demo = add_demonstration(db, seed, db.get(User, attacker.id), "I can't help")
        db.commit()
        demo_id = demo.id

    # never promoted: a round refuses the set, and a snapshot leaves it out
    r = client.post("/api/v1/training/rounds", json={"prompt_set_ids": [ps["id"]]}, headers=admin.headers)
    assert r.status_code == 422 and "never promoted" in r.json()["detail"]
    with database.session() as db:
        snap = take_snapshot(db, [ps["id"]], utcnow())
        assert snap["counts"] == {"rankings": 0, "demonstrations": 0, "prompts_train": 0, "prompts_validation": 0}
        assert snap["red_team"] == {"promoted": {}, "left_out": [ps["id"]]}

    assert client.post(f"/api/v1/prompt-sets/{ps['id']}/red-team/promote", headers=admin.headers).status_code == 200
    with database.session() as db:
        # a ranking made after the promotion is not training data
        late = db.scalars(select(Ranking).order_by(Ranking.id)).all()[-1]
        late.created_at = db.get(PromptSet, ps["id"]).red_team_promoted_at + timedelta(seconds=5)
        db.commit()
        late_id = late.id
    r = client.post("/api/v1/training/rounds", json={"prompt_set_ids": [ps["id"]]}, headers=admin.headers)
    assert r.status_code == 202, r.text
    with database.session() as db:
        snap = take_snapshot(db, [ps["id"]], utcnow() + timedelta(minutes=1))
        assert snap["counts"]["rankings"] == 2 and late_id not in snap["ids"]["rankings"]
        assert snap["ids"]["demonstrations"] == [demo_id]
        assert snap["counts"]["prompts_train"] + snap["counts"]["prompts_validation"] == 3
        assert list(snap["red_team"]["promoted"]) == [str(ps["id"])] and snap["red_team"]["left_out"] == []
        data = load_round_data(db, snap, rm_holdout_fraction=0)
        examples = data.rankings
        assert len(examples) == 2
        demoted = 0
        for example in examples:
            texts = [example.completions[g[0]] for g in example.ranking]
            # the attacker ranked the flagged reply best; the RM sees it rejected
            failing = [t for t in texts if t in FLAGS and t != "A2 lecture"]
            if failing:
                assert texts[-1] in failing and texts[0] not in failing, texts
                demoted += 1
        assert demoted >= 1  # two of the three seeds have a failing reply; one ranking is late
        assert [d.completion for d in data.demonstrations] == ["I can't help"]



def test_the_set_page_shows_the_failure_rate_and_promotes_with_csrf(client, database, admin, make_account) -> None:
    ps = _red_team_set(client, database, admin)
    _sample(database, ps["id"], "A")
    _rank_all(client, make_account(), ps["id"])
    csrf = login(client, "admin")
    url = f"/admin/prompt-sets/{ps['id']}"
    page = client.get(url).text
    assert "Failure rate under attack" in page and 'id="red-team-promote"' in page
    assert "33.3%" in page and "9.7% – 70.0%" in page
    r = client.post(url, data={"action": "red_team_promote"}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    with database.session() as db:
        assert db.get(PromptSet, ps["id"]).red_team_promoted_at is None
    r = client.post(url, data={"action": "red_team_promote", "csrf_token": csrf})
    assert r.status_code == 200 and "Promoted" in r.text and 'id="red-team-promoted"' in r.text
    with database.session() as db:
        assert db.get(PromptSet, ps["id"]).red_team_promoted_by_id == admin.id
    r = client.post(url, data={"action": "red_team_promote", "csrf_token": csrf})
    assert r.status_code == 200 and "Already promoted." in r.text
    plain = client.post("/api/v1/prompt-sets", json={"name": "plain"}, headers=admin.headers).json()
    assert "Failure rate under attack" not in client.get(f"/admin/prompt-sets/{plain['id']}").text
