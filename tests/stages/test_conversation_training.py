"""Training on conversations: loss on every assistant turn (sft_assistant_turns="all"), and
contexts too long for a stage cut from their oldest turns, system kept, in SFT, the reward
model and PPO (trainer.prompting.fit_prompt), with the cut in each stage's metrics."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.config import ConfigError, DPOConfig, EvalConfig, SFTConfig, stage_configs, validate_round_config
from trainer.prompting import encode_rendered, fit_prompt, prompt_text, render_prompt
from trainer.stages.common import IGNORE_INDEX
from trainer.stages.dpo import train_dpo
from trainer.stages.evaluate import evaluate_policies
from trainer.stages.ppo import PPOConfig, train_ppo
from trainer.stages.reward import RankingExample, RewardModel, RMConfig, train_reward_model
from trainer.stages.sft import SFTExample, encode_sft, encode_sft_example, train_sft

SYSTEM = {"role": "system", "content": "Be brief."}
FIRST_REPLY = "good answer"
LAST_REPLY = "great marker"
TWO_TURNS = [
    SYSTEM,
    {"role": "user", "content": "hello world"},
    {"role": "assistant", "content": FIRST_REPLY},
    {"role": "user", "content": "Thank you"},
]


def labelled_spans(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of consecutive labelled tokens (and check labels equal the ids)."""
    spans, run = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if run:
                spans.append(tokenizer.decode(run))
            run = []
        else:
            assert label == token
            run.append(token)
    if run:
        spans.append(tokenizer.decode(run))
    return spans


def long_conversation(exchanges: int, system: bool = True) -> list[dict[str, str]]:
    """``exchanges`` numbered user/assistant pairs, then a last user turn."""
    msgs = [SYSTEM] if system else []
    for i in range(exchanges):
        msgs.append({"role": "user", "content": f"question {i}: apple banana cherry delta echo"})
        msgs.append({"role": "assistant", "content": f"answer {i}: foxtrot golf hotel india"})
    msgs.append({"role": "user", "content": "last question: kilo lima"})
    return msgs


# ------------------------------------------------------------------ assistant turns


def test_all_labels_every_assistant_turn_and_last_only_the_written_reply(tokenizer):
    ex = SFTExample(prompt=None, messages=TWO_TURNS, completion=LAST_REPLY)
    eos = tokenizer.eos_token

    every = encode_sft(tokenizer, ex, 256, "all")
    assert every.fallback is None and every.context_cut == 0
    assert labelled_spans(tokenizer, every.input_ids, every.labels) == [FIRST_REPLY + eos, LAST_REPLY + eos]
    labelled = tokenizer.decode([t for t in every.labels if t != IGNORE_INDEX])
    for text in ("hello world", "Thank you", "Be brief.", "user", "system", "<|im_start|>"):
        assert text not in labelled

    last = encode_sft(tokenizer, ex, 256, "last")
    assert labelled_spans(tokenizer, last.input_ids, last.labels) == [LAST_REPLY + eos]
    assert (last.input_ids, last.labels) == encode_sft_example(tokenizer, ex, 256)  # the default, unchanged
    assert every.input_ids == last.input_ids  # same sequence, only the labels differ
    assert every.labels[-1] == tokenizer.eos_token_id


def test_all_is_last_for_single_turn_demonstrations(tokenizer):
    for ex in (
        SFTExample(prompt="Say hello", messages=None, completion="hello world"),
        SFTExample(prompt=None, messages=[SYSTEM, {"role": "user", "content": "hi"}], completion="hello"),
    ):
        every = encode_sft(tokenizer, ex, 128, "all")
        assert (every.input_ids, every.labels) == encode_sft_example(tokenizer, ex, 128)
        assert every.fallback is None


def test_all_falls_back_to_the_last_turn_with_a_reason(tokenizer):
    ex = SFTExample(prompt=None, messages=TWO_TURNS, completion=LAST_REPLY)
    # A template that rewrites earlier assistant turns (as thinking-stripping templates do):
    # the conversation up to a turn is no longer a prefix of the whole one.
    tokenizer.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' and not loop.last %}{{ 'ok' }}{% else %}{{ message['content'] }}"
        "{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    rewritten = encode_sft(tokenizer, ex, 256, "all")
    assert "not a prefix" in rewritten.fallback
    assert labelled_spans(tokenizer, rewritten.input_ids, rewritten.labels) == [LAST_REPLY + tokenizer.eos_token]

    tokenizer.chat_template = None
    plain = encode_sft(tokenizer, ex, 256, "all")
    assert plain.fallback == "the tokenizer has no chat template"
    assert labelled_spans(tokenizer, plain.input_ids, plain.labels) == [LAST_REPLY + tokenizer.eos_token]


def test_assistant_turns_is_a_validated_round_key():
    assert SFTConfig().assistant_turns == "last"
    assert stage_configs({"sft_assistant_turns": "all"}).sft.assistant_turns == "all"
    assert validate_round_config({"sft_assistant_turns": "all"}) == {"sft_assistant_turns": "all"}
    with pytest.raises(ConfigError, match="sft_assistant_turns must be one of last, all"):
        validate_round_config({"sft_assistant_turns": "every"})
    with pytest.raises(ValueError, match="assistant_turns must be one of last, all"):
        SFTConfig(assistant_turns="every")


def test_sft_with_all_trains_on_more_tokens(policy, tokenizer, accelerator):
    examples = [SFTExample(prompt=None, messages=TWO_TURNS, completion=LAST_REPLY)] * 2
    runs = {}
    for mode in ("last", "all"):
        model = copy.deepcopy(policy)
        config = SFTConfig(lr=1e-3, epochs=1, min_steps=0, batch_size=2, assistant_turns=mode)
        runs[mode] = train_sft(model, tokenizer, examples, [], config, accelerator=accelerator)
    reply = len(tokenizer(LAST_REPLY, add_special_tokens=False)["input_ids"]) + 1
    first = len(tokenizer(FIRST_REPLY, add_special_tokens=False)["input_ids"]) + 1
    assert runs["last"]["train_tokens"] == 2 * reply
    assert runs["all"]["train_tokens"] == 2 * (reply + first)
    assert runs["all"]["assistant_turns_fallbacks"] == 0
    assert "assistant_turns_fallbacks" not in runs["last"]


# ------------------------------------------------------------------ context cuts


def test_fit_prompt_cuts_whole_oldest_exchanges_and_keeps_the_system_message(tokenizer):
    msgs = long_conversation(8)
    full = len(encode_rendered(tokenizer, prompt_text(tokenizer, msgs)))
    limit = full // 2
    fitted = fit_prompt(tokenizer, msgs, limit)
    assert fitted.dropped > 0 and fitted.dropped % 2 == 0  # whole user + assistant pairs
    assert fitted.messages[0] == SYSTEM and fitted.messages[1]["role"] == "user"
    assert fitted.messages[1:] == msgs[1 + fitted.dropped :]  # the oldest went, the newest stayed
    assert fitted.text == render_prompt(tokenizer, None, fitted.messages)
    assert len(encode_rendered(tokenizer, fitted.text)) <= limit
    # One exchange fewer cut would not fit: nothing was cut that did not have to be.
    one_less = [SYSTEM, *msgs[fitted.dropped - 1 :]]
    assert len(encode_rendered(tokenizer, prompt_text(tokenizer, one_less))) > limit

    assert fit_prompt(tokenizer, msgs, None).dropped == 0
    assert fit_prompt(tokenizer, msgs, full).dropped == 0
    plain = "word " * 300  # a single-turn string prompt is untouched (the encoder cuts its start)
    assert fit_prompt(tokenizer, plain, 10) == (prompt_text(tokenizer, plain), None, 0)


def test_sft_cuts_long_conversations_from_the_oldest_turns_and_reports_it(policy, tokenizer, accelerator):
    long = SFTExample(prompt=None, messages=long_conversation(10), completion=LAST_REPLY)
    short = SFTExample(prompt=None, messages=TWO_TURNS, completion=LAST_REPLY)
    max_length = 200  # room for two of the ten exchanges
    for mode in ("last", "all"):
        enc = encode_sft(tokenizer, long, max_length, mode)
        assert enc.context_cut > 0 and enc.context_cut % 2 == 0
        assert len(enc.input_ids) <= max_length
        text = tokenizer.decode(enc.input_ids)
        assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
        assert "question 0:" not in text and "last question: kilo lima" in text
        assert labelled_spans(tokenizer, enc.input_ids, enc.labels)[-1] == LAST_REPLY + tokenizer.eos_token
        if mode == "all":  # the kept earlier replies carry loss, the cut ones are gone
            spans = labelled_spans(tokenizer, enc.input_ids, enc.labels)
            assert len(spans) > 1 and all(s.startswith("answer ") for s in spans[:-1])
    cut = encode_sft(tokenizer, long, max_length).context_cut

    config = SFTConfig(epochs=1, min_steps=0, batch_size=2, max_length=max_length)
    metrics = train_sft(policy, tokenizer, [long, short, long], [], config, accelerator=accelerator)
    assert metrics["context_cut_examples"] == 2
    assert metrics["context_cut_messages"] == 2 * cut


def test_the_reward_model_cuts_long_contexts_and_reports_it(tiny_dir, tokenizer, accelerator):
    torch.manual_seed(0)
    rm = RewardModel.from_policy_dir(tiny_dir)
    completions = ["great marker answer", "bad answer", "good answer"]
    long = RankingExample(prompt=None, messages=long_conversation(10), completions=completions, ranking=[[0], [2], [1]])
    short = RankingExample(prompt="Write about the sea.", messages=None, completions=completions, ranking=[[0], [1, 2]])
    config = RMConfig(max_length=96, epochs=1, min_steps=0, rankings_per_batch=2)
    metrics = train_reward_model(rm, tokenizer, [long, short], [], config, accelerator)
    assert metrics["context_cut_examples"] == 1
    longest = len(tokenizer(completions[0], add_special_tokens=False)["input_ids"])
    expected = fit_prompt(tokenizer, long, 96 - longest - 1)  # room for the longest completion and EOS
    assert metrics["context_cut_messages"] == expected.dropped > 0


def test_ppo_cuts_long_prompts_from_the_oldest_turns_and_reports_it(policy, tokenizer, accelerator):
    seen: list[str] = []

    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
        seen.extend(prompts)
        return torch.zeros(len(prompts))

    prompts = [long_conversation(10), "Write about the sea."]
    config = PPOConfig(
        lr=1e-4, iterations=1, rollout_batch_size=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=4,
        temperature=1.0, max_prompt_length=64,
    )
    metrics = train_ppo(
        policy, copy.deepcopy(policy), RewardModel.from_causal_lm(policy), reward, tokenizer, prompts, config,
        accelerator=accelerator,
    )
    expected = fit_prompt(tokenizer, prompts[0], 64)
    assert metrics["context_cut_examples"] == 1
    assert metrics["context_cut_messages"] == expected.dropped > 0
    conversation = next(p for p in seen if "last question" in p)
    assert conversation == expected.text and "question 0:" not in conversation
    assert conversation.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert len(encode_rendered(tokenizer, conversation)) <= 64
    assert prompt_text(tokenizer, prompts[1]) in seen  # the string prompt as it was


def test_dpo_cuts_long_contexts_as_the_reward_model_does(policy, tokenizer, accelerator):
    completions = ["great marker answer", "bad answer"]
    long = RankingExample(prompt=None, messages=long_conversation(10), completions=completions, ranking=[[0], [1]])
    config = DPOConfig(epochs=1, min_steps=0, rankings_per_batch=1, max_length=96)
    metrics = train_dpo(policy, copy.deepcopy(policy), tokenizer, [long], [], config, accelerator=accelerator)
    longest = len(tokenizer(completions[0], add_special_tokens=False)["input_ids"])
    expected = fit_prompt(tokenizer, long, 96 - longest - 1)  # room for the longest completion and EOS
    assert metrics["context_cut_examples"] == 1
    assert metrics["context_cut_messages"] == expected.dropped > 0


def test_the_evaluation_cuts_long_prompts_from_the_oldest_turns(policy, tokenizer):
    seen: list[str] = []

    def score(prompts: list[str], responses: list[str]) -> torch.Tensor:
        seen.extend(prompts)
        return torch.zeros(len(prompts))

    prompts = [long_conversation(10), "Write about the sea."]
    params = EvalConfig(max_new_tokens=4, temperature=1.0, samples_per_prompt=1, max_prompt_length=64)
    result = evaluate_policies(policy, copy.deepcopy(policy), score, tokenizer, prompts, params)
    expected = fit_prompt(tokenizer, prompts[0], 64)
    assert result["context_cut_examples"] == 1 and result["context_cut_messages"] == expected.dropped > 0
    assert expected.text in seen and "question 0:" not in expected.text
