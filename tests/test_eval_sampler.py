"""The sampler writes evaluation samples for every named policy (tiny model)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.models import Completion, EvaluationSample
from app.services import evaluations
from tests.factories import make_prompt_set, make_prompts
from tests.round_helpers import bootstrap_v0, fast_settings
from tests.test_sampler import SAMPLING, register_tiny
from trainer.sampler import Sampler

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_sampler_writes_the_samples_an_evaluation_waits_for(settings, database, tiny_base) -> None:  # type: ignore[no-untyped-def]
    s = fast_settings(settings, buffer_prompts=0)
    v0 = bootstrap_v0(s, database, tiny_base).id
    v1 = register_tiny(s, database, 1, seed=11)
    with database.session() as db:
        ps = make_prompt_set(db, "heldout", k=2, sampling=SAMPLING)
        prompts = [p.id for p in make_prompts(db, ps, [f"held-out prompt {i}" for i in range(3)], split="validation")]
        ev = evaluations.create_evaluation(
            db, None, name="v1 vs v0", policy_ids=[v0, v1], prompt_set_ids=[ps.id], per_pair=2, seed=5
        )
        assert ev.status == "sampling"
        ev_id = ev.id
    sampler = Sampler(database, s)
    try:
        sampler.fill(max_batches=20)
    finally:
        sampler.close()
    with database.session() as db:
        ev = evaluations.get_evaluation(db, ev_id)
        assert ev.status == "active"
        rows = list(db.scalars(select(EvaluationSample)))
        assert len(rows) == 3 * 2 * 2  # prompts x policies x per_pair
        assert {(r.prompt_id, r.policy_id, r.sample_index) for r in rows} == {
            (p, pol, k) for p in prompts for pol in (v0, v1) for k in (0, 1)
        }
        assert all(r.seed is not None and r.params.get("max_new_tokens") == SAMPLING["max_new_tokens"] for r in rows)
        # evaluation samples are not completions: nothing was added for ranking
        assert not db.scalars(select(Completion).where(Completion.prompt_id.in_(prompts))).all()
