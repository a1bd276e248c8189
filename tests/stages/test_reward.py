"""Reward model: K-way batching, tie/unacceptable handling, last-token scoring, save/load,
bias normalisation and held-out accuracy on a learnable preference."""

from __future__ import annotations

import json
import random

import pytest
import torch

from trainer.stages.common import Cancelled, build_chat_prompt, pad_right
from trainer.stages.reward import (
    HEAD_FILE,
    META_FILE,
    RankingExample,
    RewardModel,
    RMConfig,
    last_real_index,
    normalize_reward_bias,
    pairs_from_ranking,
    score,
    train_reward_model,
)

WORDS = "apple banana cherry delta echo foxtrot golf hotel india juliet kilo lima".split()
TOPICS = ["the sea", "the sky", "a fox", "a poem", "rewards", "the dog", "numbers", "fruit"]


def marker_rankings(n: int, seed: int) -> list[RankingExample]:
    """K=4 completions of random words; those containing 'marker' rank first (tied)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        completions, good = [], []
        for k in range(4):
            words = rng.sample(WORDS, 4)
            if k < 2:
                words.insert(rng.randrange(len(words) + 1), "marker")
                good.append(k)
            completions.append(" ".join(words))
        order = list(range(4))
        rng.shuffle(order)
        completions = [completions[i] for i in order]
        winners = [order.index(g) for g in good]
        losers = [i for i in range(4) if i not in winners]
        out.append(
            RankingExample(
                prompt=f"Write about {rng.choice(TOPICS)}.",
                messages=None,
                completions=completions,
                ranking=[winners, losers],
            )
        )
    return out


@pytest.fixture()
def rm(tiny_dir) -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.from_policy_dir(tiny_dir)


def test_pairs_from_ranking_orders_groups_and_skips_ties():
    assert pairs_from_ranking([[0], [1], [2]]) == [(0, 1), (0, 2), (1, 2)]
    assert pairs_from_ranking([[0], [2, 1], [3]]) == [(0, 2), (0, 1), (0, 3), (2, 3), (1, 3)]
    assert pairs_from_ranking([[0, 1, 2]]) == []  # one tied group: no pair
    assert len(pairs_from_ranking([[i] for i in range(4)])) == 6  # K choose 2


def test_head_init_small_weights_zero_bias(rm):
    hidden = rm.config.hidden_size
    assert rm.score_head.bias.item() == 0.0
    assert rm.score_head.weight.std().item() < 2.0 / (hidden + 1) ** 0.5
    assert rm.score_head.weight.dtype == torch.float32


def test_kway_ranking_is_encoded_once_per_completion(rm, tokenizer, accelerator):
    rows: list[int] = []
    rm.backbone.register_forward_hook(
        lambda mod, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    ranking = RankingExample("Pick one", None, ["alpha", "bravo", "charlie", "delta"], [[2], [0], [3], [1]])
    metrics = train_reward_model(rm, tokenizer, [ranking], [], RMConfig(rankings_per_batch=1, epochs=1, min_steps=0), accelerator)
    assert rows == [4]  # K sequences, not K(K-1) = 12
    assert metrics["pairs"] == 6 and metrics["forward_rows"] == 4

    rows.clear()
    metrics = train_reward_model(
        rm, tokenizer, [ranking], [], RMConfig(rankings_per_batch=1, epochs=1, min_steps=0, mode="pairwise"), accelerator
    )
    assert rows == [12]
    assert metrics["pairs"] == 6


def test_ties_only_and_unacceptable_rankings(rm, tokenizer, accelerator):
    tied = RankingExample("q", None, ["a", "b"], [[0, 1]])
    bad = RankingExample("q", None, ["a", "b", "c"], [[1], [0], [2]], all_unacceptable=True)
    ok = RankingExample("q", None, ["a", "b"], [[1], [0]])
    keep = train_reward_model(rm, tokenizer, [tied, bad, ok], [], RMConfig(rankings_per_batch=4, epochs=1, min_steps=0), accelerator)
    assert keep["rankings_skipped"] == 1 and keep["pairs"] == 3 + 1
    skip = train_reward_model(
        rm, tokenizer, [tied, bad, ok], [], RMConfig(rankings_per_batch=4, epochs=1, min_steps=0, unacceptable="skip"), accelerator
    )
    assert skip["rankings_skipped"] == 2 and skip["pairs"] == 1
    with pytest.raises(ValueError):
        train_reward_model(rm, tokenizer, [tied], [], RMConfig(), accelerator)


def test_score_is_read_at_the_last_real_token(rm, tokenizer):
    prompt = build_chat_prompt(tokenizer, "Tell me something", None)
    base = score(rm, tokenizer, [prompt], ["a short answer"])
    # Batched next to a much longer response (more right padding): same score.
    batched = score(rm, tokenizer, [prompt, prompt], ["a short answer", "a much longer answer " * 6])
    assert torch.allclose(batched[0], base[0], atol=1e-5)

    # pad == eos (SmolLM2): padding with EOS ids must not move the read position.
    tokenizer.pad_token = tokenizer.eos_token
    padded = score(rm, tokenizer, [prompt, prompt], ["a short answer", "a much longer answer " * 6])
    assert torch.allclose(padded[0], base[0], atol=1e-5)

    # The score equals the head applied to the hidden state of the response's EOS.
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids += tokenizer("a short answer", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids, mask = pad_right([ids, ids + [tokenizer.eos_token_id] * 5], tokenizer.pad_token_id)
    mask[1, len(ids) :] = 0
    with torch.no_grad():
        hidden = rm.backbone(input_ids=torch.tensor([ids])).last_hidden_state
        expected = rm.score_head(hidden[0, -1]).squeeze()
        got = rm(input_ids, mask)
    assert last_real_index(mask).tolist() == [len(ids) - 1, len(ids) - 1]
    assert torch.allclose(got, expected.expand(2), atol=1e-5)


def test_last_real_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_real_index(mask).tolist() == [2, 4, 4]


def test_rm_learns_marker_preference(rm, tokenizer, accelerator, step_log):
    torch.manual_seed(0)
    train, val = marker_rankings(48, seed=1), marker_rankings(16, seed=2)
    # patience=4: all four epochs run (early stopping has its own test)
    config = RMConfig(lr=2e-3, epochs=4, patience=4, rankings_per_batch=4, max_length=64, warmup_ratio=0.0, seed=0)
    metrics = train_reward_model(rm, tokenizer, train, val, config, accelerator=accelerator, on_step=step_log)
    assert metrics["val_accuracy"] >= 0.9, metrics
    assert rm.score_head.bias.item() == 0.0  # shift-invariant loss: the bias is left to normalisation
    assert metrics["val_pairs"] == 16 * 4  # 2 winners x 2 losers, ties inside groups give none
    assert len(step_log.series("loss")) == metrics["steps"] == 48
    assert step_log.series("val_accuracy")[-1] == metrics["val_accuracy"]


def test_normalisation_save_and_load(rm, tokenizer, tmp_path):
    demos = [(f"Write about {t}.", f"{t} is {w}") for t, w in zip(["sea", "sky", "fox", "dog"], WORDS)]
    demos.append(([{"role": "user", "content": "Hello"}], "hello there"))
    with torch.no_grad():
        rm.score_head.weight.mul_(50.0)  # make scores far from zero first
    offset = normalize_reward_bias(rm, tokenizer, demos)
    assert abs(offset) > 1e-3
    rendered = [
        build_chat_prompt(tokenizer, p, None) if isinstance(p, str) else build_chat_prompt(tokenizer, None, p)
        for p, _ in demos
    ]
    scores = score(rm, tokenizer, rendered, [r for _, r in demos])
    assert abs(scores.double().mean().item()) < 1e-4
    assert rm.score_head.bias.item() == pytest.approx(offset, abs=1e-6)

    out = rm.save(tmp_path / "rm", tokenizer=tokenizer, extra={"round": 1})
    assert (out / HEAD_FILE).exists() and (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["bias"] == pytest.approx(offset, abs=1e-6) and meta["round"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    loaded = RewardModel.load(out)
    assert torch.allclose(score(loaded, tokenizer, rendered, [r for _, r in demos]), scores, atol=1e-5)

    rm.save(out)  # overwrite in place, atomically
    assert RewardModel.load(out).score_head.bias.item() == pytest.approx(offset, abs=1e-6)


def test_from_causal_lm_matches_policy_dir(policy, tiny_dir, tokenizer):
    a = RewardModel.from_causal_lm(policy)
    b = RewardModel.from_policy_dir(tiny_dir)
    b.score_head.load_state_dict(a.score_head.state_dict())
    prompt = build_chat_prompt(tokenizer, "x", None)
    assert torch.allclose(score(a, tokenizer, [prompt], ["y"]), score(b, tokenizer, [prompt], ["y"]), atol=1e-5)
    assert a.backbone is not policy.model  # a copy: training the RM leaves the policy alone


def test_rm_cancel(rm, tokenizer, accelerator):
    with pytest.raises(Cancelled):
        train_reward_model(rm, tokenizer, marker_rankings(4, 0), [], RMConfig(), accelerator, None, lambda: True)


def test_reward_fn_scores_without_freezing_the_model(rm, tokenizer):
    import copy

    from trainer.stages.reward import reward_fn_from_model

    reward_fn = reward_fn_from_model(rm, tokenizer)
    prompt = build_chat_prompt(tokenizer, "Hi", None)
    out = reward_fn([prompt, prompt], ["hello", "hello there"])
    assert out.shape == (2,) and torch.allclose(out, score(rm, tokenizer, [prompt, prompt], ["hello", "hello there"]))
    value = copy.deepcopy(rm)  # the PPO value model is a copy of the RM: it must stay trainable
    assert all(p.requires_grad for p in value.parameters())


def test_a_warm_start_that_training_only_makes_worse_is_kept(rm, tokenizer, accelerator):
    torch.manual_seed(0)
    good = RMConfig(lr=2e-3, epochs=3, patience=3, min_steps=0, rankings_per_batch=4, max_length=64, warmup_ratio=0.0)
    val = marker_rankings(8, seed=2)
    first = train_reward_model(rm, tokenizer, marker_rankings(24, seed=1), val, good, accelerator)
    assert first["val_accuracy"] >= 0.9
    flipped = [
        RankingExample(ex.prompt, ex.messages, ex.completions, list(reversed(ex.ranking)))
        for ex in marker_rankings(24, seed=3)
    ]
    bad = RMConfig(lr=2e-3, epochs=2, patience=2, min_steps=0, rankings_per_batch=4, max_length=64, warmup_ratio=0.0)
    again = train_reward_model(rm, tokenizer, flipped, val, bad, accelerator, keep_start_if_better=True)
    assert again["best_epoch"] == 0 and again["val_accuracy"] == again["val_accuracy_before"] >= 0.9, again


def test_trainable_layers_freezes_the_embeddings_and_lower_layers(rm, tokenizer, accelerator):
    from trainer.stages.reward import decoder_layers

    layers = decoder_layers(rm.backbone)
    assert len(layers) >= 2
    before = [p.detach().clone() for p in rm.parameters()]
    config = RMConfig(lr=2e-3, epochs=1, patience=1, min_steps=0, rankings_per_batch=4, max_length=64,
                      warmup_ratio=0.0, trainable_layers=1)
    train_reward_model(rm, tokenizer, marker_rankings(8, seed=1), [], config, accelerator)
    changed = {id(p) for p, old in zip(rm.parameters(), before) if not torch.equal(p.detach(), old)}
    ids = lambda module: {id(p) for p in module.parameters()}  # noqa: E731
    frozen = ids(rm.backbone.get_input_embeddings()).union(*(ids(layer) for layer in layers[:-1]))
    assert changed & ids(layers[-1]) and changed & ids(rm.score_head)  # the top layer and the head trained
    assert not changed & frozen  # the embeddings and the lower layers did not
    assert all(p.requires_grad for p in rm.parameters())  # restored for whoever uses the RM next
