"""The slots table against a recount from the base tables, after every step of random
sequences of claim, submit, skip, undo, lease expiry, requeue, redeploy, new completions
and retiring, on both databases.

After each step (``_check``):
- every (prompt, kind, policy) pair's counters equal a count of its tasks by status, and
  ``next_lapse`` is a lower bound of its leases (NULL when nothing is leased);
- the served rank pair of each prompt is the one app/services/serving.py's rule names,
  recomputed here in Python from completions and policies (gold prompts: none), and a
  prompt's demonstrate row is served exactly when it wants demonstrations;
- ``slot_totals`` (served and open rows per policy, regular prompts) equal a count of
  the slots rows and prompts;
- what a claim would find open for each labeler (after it marks lapsed leases expired)
  equals the open prompts the scanning query of the previous claim code finds.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from app.db import transact
from app.models import Completion, Policy, Prompt, PromptSet, Slot, SlotTotals, Task, User
from app.models.base import utcnow
from app.services import claims, policies, requeue, submissions
from app.services.errors import Conflict
from app.services.slots import open_slots, reap_lapsed
from app.services.users import create_user
from tests.factories import make_completions, make_policy, make_prompt_set, make_prompts

K = 2
OVERLAP = 2
LEASE = 3.0
LABELERS = 4
STEPS = 140


def _served_by_rule(db, ps: PromptSet) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """prompt id -> the policy a rank task shows, by the serving rule, from base rows."""
    deployed = db.scalar(select(Policy.id).where(Policy.deployed.is_(True)))
    version = dict(db.execute(select(Policy.id, Policy.version)).all())
    ready: dict[int, Counter[int]] = defaultdict(Counter)
    for prompt_id, policy_id in db.execute(
        select(Completion.prompt_id, Completion.policy_id).where(Completion.status == "ready")
    ):
        ready[prompt_id][policy_id] += 1
    out: dict[int, int] = {}
    for p in db.scalars(select(Prompt).where(Prompt.prompt_set_id == ps.id, Prompt.is_gold.is_(False))):
        have = ready.get(p.id, Counter())
        if deployed is not None and have[deployed] >= ps.k:
            out[p.id] = deployed
            continue
        with_k = [pol for pol, n in have.items() if n >= ps.k]
        if with_k:
            out[p.id] = max(with_k, key=lambda pol: version[pol])
    return out


def _check(database, ps_id: int, user_ids: list[int], now: datetime, step: str) -> None:  # type: ignore[no-untyped-def]
    with database.sessionmaker() as db:
        ps = db.get(PromptSet, ps_id)
        assert ps is not None
        slots = {(s.prompt_id, s.kind, s.policy_id): s for s in db.scalars(select(Slot))}
        counts: dict[tuple[int, str, int], Counter[str]] = defaultdict(Counter)
        leases: dict[tuple[int, str, int], list[datetime]] = defaultdict(list)
        for t in db.scalars(select(Task).where(Task.kind.in_(("rank", "demonstrate")))):
            key = (t.prompt_id, t.kind, (t.policy_id or 0) if t.kind == "rank" else 0)
            counts[key][t.status] += 1
            if t.status == "leased":
                leases[key].append(t.lease_expires_at)
        for key in set(slots) | set(counts):
            c = counts.get(key, Counter())
            s = slots.get(key)
            if not (c["submitted"] or c["leased"]):
                assert s is None or (s.submitted, s.leased, s.taken) == (0, 0, 0), (step, key)
                continue
            assert s is not None, f"{step}: no slots row for {key}"
            assert (s.submitted, s.leased, s.taken) == (c["submitted"], c["leased"], c["submitted"] + c["leased"]), (
                step, key, (s.submitted, s.leased, s.taken), dict(c),
            )
            if c["leased"]:
                assert s.next_lapse is not None and s.next_lapse <= min(leases[key]), (step, key)
            else:
                assert s.next_lapse is None, (step, key)

        rule = _served_by_rule(db, ps)
        served_rank = {s.prompt_id: s.policy_id for s in slots.values() if s.kind == "rank" and s.served}
        assert served_rank == rule, f"{step}: served pairs {served_rank} != rule {rule}"
        wants = set(db.scalars(select(Prompt.id).where(Prompt.wants_demonstration.is_(True))))
        served_demo = {s.prompt_id for s in slots.values() if s.kind == "demonstrate" and s.served}
        assert served_demo == wants, step
        want_totals: Counter[tuple[str, int, str]] = Counter()
        for s in slots.values():
            if s.served:
                want_totals[(s.kind, s.policy_id, "served")] += 1
                want_totals[(s.kind, s.policy_id, "open")] += int(s.taken < ps.overlap)
        want_totals[("prompts", 0, "served")] = len(
            db.scalars(select(Prompt.id).where(Prompt.prompt_set_id == ps_id, Prompt.is_gold.is_(False))).all()
        )
        got_totals: Counter[tuple[str, int, str]] = Counter()
        for t in db.scalars(select(SlotTotals).where(SlotTotals.prompt_set_id == ps_id)):
            got_totals[(t.kind, t.policy_id, "served")] += t.served
            got_totals[(t.kind, t.policy_id, "open")] += t.open
        assert +got_totals == +want_totals, f"{step}: slot_totals {dict(got_totals)} != {dict(want_totals)}"
        db.rollback()

        # What a claim sees (it marks lapsed leases expired first) is what the scan sees.
        transact_now = now
        reap_lapsed(db, ps_id, transact_now, limit=10_000)
        for uid in user_ids:
            for kind in ("rank", "demonstrate"):
                params = {"ps_id": ps.id, "ps_k": ps.k, "ps_overlap": ps.overlap, "labeler_id": uid, "now": now}
                got = {r.prompt_id for r in db.execute(open_slots(kind), params)}
                scan = claims.open_prompts(ps, kind, uid, now, Prompt.id).order_by(None)
                want = set(db.scalars(scan))
                assert got == want, f"{step}: labeler {uid} {kind}: slots {sorted(got)} != scan {sorted(want)}"
        db.rollback()


@pytest.mark.parametrize("seed", [1])
def test_slots_match_a_recount_after_every_step(database, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    with database.session() as db:
        ps = make_prompt_set(db, "consistency", k=K, overlap=OVERLAP, demonstration_share=0.3)
        v0 = make_policy(db)
        regular = make_prompts(db, ps, [f"prompt {i}" for i in range(10)])
        make_prompts(db, ps, [f"demo {i}" for i in range(3)], wants_demonstration=True)
        for p in regular[:8]:
            make_completions(db, p, v0, K)
        for gold in make_prompts(db, ps, [f"gold {i}" for i in range(2)], is_gold=True):
            a, b = make_completions(db, gold, v0, K)
            gold.gold_ranking = [[a.id], [b.id]]
        v1 = make_policy(db, deployed=False, artifact_path="policies/v1")
        user_ids = [create_user(db, f"c{i}", "consistency-pw", "labeler").id for i in range(LABELERS)]
        ps_id = ps.id
        regular_ids = [p.id for p in regular]
        policy_ids = [v0.id, v1.id]

    now = utcnow()
    _check(database, ps_id, user_ids, now, "setup")
    done: Counter[str] = Counter()
    with database.sessionmaker() as db:
        for i in range(STEPS):
            user = db.get(User, rng.choice(user_ids))
            assert user is not None
            roll = rng.random()
            mine = list(db.scalars(select(Task).where(Task.labeler_id == user.id).order_by(Task.id)))
            step = ""
            try:
                if roll < 0.35:
                    kind = "demonstrate" if rng.random() < 0.25 else "rank"
                    transact(db, lambda: claims.next_task(
                        db, user, ps_id, kind, lease_minutes=LEASE, gold_rate=0.2, now=now, rng=rng))
                    step = f"claim {kind}"
                elif roll < 0.55 and mine:
                    t = rng.choice(mine)
                    if t.kind == "rank":
                        transact(db, lambda: submissions.submit_ranking(
                            db, t.id, user, ranking=[[c] for c in t.completion_ids], now=now))
                    else:
                        transact(db, lambda: submissions.submit_demonstration(
                            db, t.id, user, text="an answer", max_chars=1000, now=now))
                    step = f"submit {t.id}"
                elif roll < 0.62 and mine:
                    t = rng.choice(mine)
                    transact(db, lambda: submissions.skip_task(db, t.id, user))
                    step = f"skip {t.id}"
                elif roll < 0.7 and mine:
                    t = mine[-1]
                    transact(db, lambda: submissions.undo_submission(
                        db, t.id, user, window_minutes=60, lease_minutes=LEASE, now=now))
                    step = f"undo {t.id}"
                elif roll < 0.8:
                    now += timedelta(minutes=rng.choice([1, 2, 4]))
                    step = "time passes"
                elif roll < 0.85:
                    transact(db, lambda: requeue.requeue_labeler(db, None, user.id, ps_id))
                    step = f"requeue {user.id}"
                elif roll < 0.91:
                    target = rng.choice(policy_ids)
                    transact(db, lambda: policies.deploy_policy(db, None, target))
                    step = f"deploy {target}"
                elif roll < 0.96:
                    pol = rng.choice(policy_ids)
                    chosen = rng.sample(regular_ids, 3)
                    rows = [{"prompt_id": pid, "text": f"new {pid} {j} {i}", "seed": j} for pid in chosen for j in range(K)]
                    transact(db, lambda: policies.add_completions(db, pol, {pid: K for pid in chosen}, rows))
                    step = f"sample {pol} {chosen}"
                else:
                    keep = db.scalar(select(Policy.id).where(Policy.deployed.is_(True)))
                    transact(db, lambda: policies.retire_unlabeled_completions(db, keep_policy_id=keep))
                    step = "retire"
            except Conflict as exc:
                step = f"refused: {exc}"
            db.expire_all()
            done[step.split(" ")[0]] += 1
            _check(database, ps_id, user_ids, now, f"step {i}: {step}")
    for what in ("claim", "submit", "skip", "time", "deploy", "sample"):
        assert done[what] > 0, done
