"""The sampler on conversation sets with the tiny model: it samples K replies for every
open context with the deployed policy through the chat template, the replies join the
tree under the context they were sampled for, a continuation's new context is sampled
next, and a policy without a chat template is never used to flatten a conversation."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import select

from app.models import Completion, ConversationNode, Prompt
from app.services import claims, continue_tasks, imports, policies, prompt_sets, seeds, submissions
from tests.round_helpers import bootstrap_v0, fast_settings, make_labeler
from trainer import artifacts
from trainer.sampler import Sampler

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6}


def _conversation_set(db, s, name: str = "chats"):  # type: ignore[no-untyped-def]
    ps = prompt_sets.create_prompt_set(
        db, None, name=name, k=2, sampling=SAMPLING, kind="conversation",
        conversation={"max_turns": 3, "branching": 1}, artifacts_dir=s.resolved_artifacts_dir,
    )
    rows = imports.parse_items([{"prompt": "hello world"}, {"prompt": "good answer"}])
    imports.import_rows(db, ps, rows, validation_fraction=0.0)
    db.commit()
    return ps.id


def test_the_sampler_answers_seeds_and_continued_contexts_in_the_tree(settings, database, tiny_base) -> None:
    s = fast_settings(settings, buffer_prompts=10)
    v0 = bootstrap_v0(s, database, tiny_base)
    with database.session() as db:
        set_id = _conversation_set(db, s)
    sampler = Sampler(database, s)
    try:
        assert sampler.fill() == 4
        with database.session() as db:
            seeds = db.scalars(select(ConversationNode).where(ConversationNode.parent_id.is_(None))).all()
            for seed in seeds:
                replies = db.scalars(select(ConversationNode).where(ConversationNode.parent_id == seed.id)).all()
                assert len(replies) == 2 and {r.source for r in replies} == {"sampled"}
                for reply in replies:
                    completion = db.get(Completion, reply.completion_id)
                    assert completion.prompt_id == seed.prompt_id and completion.policy_id == v0.id
                    assert completion.seed is not None and completion.params["temperature"] == 1.0
                    assert reply.content == completion.text and reply.turn == 1 and reply.depth == 1

            # a labeler ranks the first seed's replies, another continues from the best one
            ranker, writer = make_labeler(db, "ranker"), make_labeler(db, "writer")
            task = claims.next_task(db, ranker, set_id, "rank", lease_minutes=30)
            submissions.submit_ranking(db, task.id, ranker, ranking=[[c] for c in task.completion_ids])
            cont = claims.next_task(db, writer, set_id, "continue", lease_minutes=30)
            node, _ = continue_tasks.submit_continuation(db, cont.id, writer, text="hello again", max_chars=1000)
            db.commit()
            new_context = node.prompt_id
        assert sampler.fill() == 2
        with database.session() as db:
            context = db.get(Prompt, new_context)
            assert [m["role"] for m in context.messages] == ["user", "assistant", "user"]
            replies = db.scalars(select(ConversationNode).where(ConversationNode.parent_id == node.id)).all()
            assert len(replies) == 2
            assert all(db.get(Completion, r.completion_id).prompt_id == new_context for r in replies)
            assert {r.turn for r in replies} == {2}
    finally:
        sampler.close()


def test_the_sampler_answers_a_seed_a_labeler_wrote(settings, database, tiny_base) -> None:
    s = fast_settings(settings, buffer_prompts=10)
    v0 = bootstrap_v0(s, database, tiny_base)
    with database.session() as db:
        set_id = _conversation_set(db, s)
        writer = make_labeler(db, "writer")
        seed = seeds.write_seed(db, set_id, writer, text="hello there world", validation_fraction=0.0)
        db.commit()
        seed_id, seed_prompt = seed.node.id, seed.prompt.id
    sampler = Sampler(database, s)
    try:
        assert sampler.fill() == 6  # K = 2 for each of the two imported seeds and the written one
        with database.session() as db:
            replies = db.scalars(select(ConversationNode).where(ConversationNode.parent_id == seed_id)).all()
            assert len(replies) == 2 and {r.source for r in replies} == {"sampled"}
            for reply in replies:
                completion = db.get(Completion, reply.completion_id)
                assert completion.prompt_id == seed_prompt and completion.policy_id == v0.id
                assert reply.root_id == seed_id and reply.turn == 1
            assert db.get(ConversationNode, seed_id).author_id == writer.id
    finally:
        sampler.close()


def test_a_policy_without_a_chat_template_does_not_sample_conversations(settings, database, tiny_base, caplog) -> None:
    s = fast_settings(settings, buffer_prompts=10)
    v0 = bootstrap_v0(s, database, tiny_base)
    with database.session() as db:
        _conversation_set(db, s)
        # v1: the same checkpoint with its chat template removed, deployed after the set was made
        src = artifacts.resolve(s.resolved_artifacts_dir, v0.artifact_path)
        rel = artifacts.policy_rel_path(1)
        dst = artifacts.resolve(s.resolved_artifacts_dir, rel)
        shutil.copytree(src, dst)
        (dst / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((dst / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(config))
        v1 = policies.register_policy(db, version=1, artifact_path=rel)
        policies.deploy_policy(db, None, v1.id)
        db.commit()
    sampler = Sampler(database, s)
    try:
        with caplog.at_level("ERROR", logger="trainer.sampler"):
            assert sampler.fill() == 0
        assert "has no chat template" in caplog.text
        with database.session() as db:
            assert db.scalar(select(Completion.id).limit(1)) is None
    finally:
        sampler.close()
