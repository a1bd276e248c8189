"""Stage 3: PPO against the reward model, as in InstructGPT (and TRL's PPO trainer).

One iteration:

1. **Rollout.** Sample one response per prompt from the policy (temperature, top-p).
   Responses end at the first EOS; tokens after it are masked out.
2. **Score.** ``reward_fn(prompt_texts, response_texts)`` (the frozen RM, or any function)
   gives one scalar per response. A response without EOS gets ``missing_eos_penalty``
   added to its score.
3. **Per-token reward.** ``r_t = -beta * (log pi(y_t) - log pi_ref(y_t))`` for every
   response token, plus the score on the last token. Log-probabilities come from the
   logits divided by the sampling temperature, for the policy and the reference alike.
4. **GAE** (gamma 1, lambda 0.95) with the value model's per-token values; advantages are
   whitened, rewards optionally too.
5. **PPO epochs.** Several passes over shuffled minibatches: clipped ratio loss, clipped
   value loss (``vf_coef``), and optionally the PPO-ptx term
   ``ptx_coef * LM loss`` on demonstration text, in one backward per micro-batch.
6. Optionally adapt ``beta`` towards ``target_kl`` (Ziegler et al.'s controller).

Policy and value model are wrapped in one ``nn.Module`` with one optimizer, so a single
``accelerator.prepare`` covers both (DDP, DeepSpeed ZeRO-2). The reference policy is
frozen and only moved to the device.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from app.models.prompts import DEFAULT_SAMPLING
from trainer.config import PPOConfig, derive_ppo_iterations, with_sampling

from trainer.prompting import PromptLike, fit_prompt, pad_token_id, prompt_token_limit

from .accel import get_accelerator, maybe_gradient_checkpointing, seed_everything, set_dropout_off, shard
from .callbacks import StepCallback, check_cancel
from .metrics import StageMetrics
from .optim import ParamGroups, backward_and_step, configure_optimizer, trainable
from .sampling import Samples, response_logits, response_logprobs, sample_responses
from .tensors import entropy_from_logits, masked_mean, masked_whiten, token_logprobs
from .sft import SFTExample, collate_sft, completion_loss, encode_sft_example

logger = logging.getLogger(__name__)

RewardFn = Callable[[list[str], list[str]], torch.Tensor]


class PolicyAndValue(nn.Module):
    """Policy + value model behind one ``forward`` (so DDP/DeepSpeed see a single module).

    ``forward`` returns ``(response_logits [B, R, V], values [B, R], ptx_loss | None)``;
    ``values[:, t]`` is the value of the state before response token ``t``.
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_len: int,
        ptx_batch: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits = response_logits(self.policy, input_ids, attention_mask, prompt_len)
        values = self.value_model.token_scores(input_ids, attention_mask)[:, prompt_len - 1 : -1]
        ptx_loss = completion_loss(self.policy, ptx_batch)[0] if ptx_batch is not None else None
        return logits, values, ptx_loss

    def optimizer_groups(self, lr: float, value_lr: float | None) -> ParamGroups:
        """The policy and the value model as two groups, each with its learning rate."""
        return [
            {"params": trainable(self.policy), "lr": lr},
            {"params": trainable(self.value_model), "lr": value_lr or lr},
        ]


class AdaptiveKLController:
    """Ziegler et al. (2019): move beta so the KL per episode tracks ``target``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over ``[B, R]`` tensors; returns ``(advantages, returns)``.

    ``rewards`` and ``values`` must be 0 beyond each response's end (``mask``), so the
    state after the last token has value 0 (the episode is over).
    """
    rewards = rewards * mask
    values = values * mask
    last = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def _prompt_stream(n: int, batch: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of indexes into ``n`` prompts, reshuffled every pass."""
    g = torch.Generator().manual_seed(seed)
    buf: list[int] = []
    while True:
        while len(buf) < batch:
            buf.extend(torch.randperm(n, generator=g).tolist())
        yield buf[:batch]
        buf = buf[batch:]


def _ptx_stream(encoded: list, batch: int, seed: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    for idx in _prompt_stream(len(encoded), batch, seed):
        yield collate_sft([encoded[i] for i in idx], pad_id)


def train_ppo(
    policy: nn.Module,
    ref_policy: nn.Module,
    value_model: nn.Module,
    reward_fn: RewardFn,
    tokenizer,
    prompts: Sequence[PromptLike],
    config: PPOConfig | None = None,
    ptx_examples: Sequence[SFTExample] | None = None,
    accelerator=None,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Optimise ``policy`` (in place) with PPO against ``reward_fn``.

    ``value_model`` is a :class:`~trainer.stages.reward.RewardModel`-shaped module (a copy
    of the trained RM, InstructGPT-style) with ``token_scores(input_ids, attention_mask)``.
    ``ref_policy`` is a frozen copy of the starting (SFT) policy. ``prompts`` are any
    :data:`~trainer.prompting.PromptLike`; ``reward_fn`` receives the rendered prompt
    texts and the decoded responses (special tokens skipped) and returns ``[B]`` scores.

    ``on_step("ppo", iteration, metrics)`` gets per iteration: ``score`` (mean reward_fn
    score), ``reward`` (score with the EOS penalty), ``kl`` (mean per-episode sum of
    ``log pi - log pi_ref``), ``non_score_reward``, ``entropy``, ``clipfrac``,
    ``value_loss``, ``value_clipfrac``, ``approx_kl``, ``policy_loss``,
    ``response_length``, ``eos_fraction``, ``kl_coef``, ``episodes_per_s`` and
    ``ptx_loss`` when ``ptx_coef > 0``. The return value holds the last iteration's
    metrics plus ``score_first``, ``iterations``, ``episodes``, ``seconds``,
    ``final_kl_coef`` (the adaptive controller's beta after the last update) and
    ``context_cut_examples`` / ``context_cut_messages`` (prompts whose conversation was cut
    from its oldest turns to fit the prompt budget, :func:`~trainer.prompting.fit_prompt`,
    and the messages dropped in all).
    """
    config = with_sampling(config or PPOConfig(), DEFAULT_SAMPLING)
    if not prompts:
        raise ValueError("PPO needs at least one prompt")
    accelerator = get_accelerator(accelerator)
    seed_everything(config.seed, accelerator)
    pad_id = pad_token_id(tokenizer)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token")

    for m in (policy, ref_policy, value_model):
        set_dropout_off(m)
    ref_policy.eval()
    ref_policy.requires_grad_(False)
    ref_policy.to(accelerator.device)
    maybe_gradient_checkpointing(policy, accelerator)
    maybe_gradient_checkpointing(value_model, accelerator)

    if not any(p.requires_grad for p in value_model.parameters()):
        logger.warning("the value model has no trainable parameter: its values stay those of the initial RM")
    wrapper = PolicyAndValue(policy, value_model)
    optimizer = configure_optimizer(
        wrapper.optimizer_groups(config.lr, config.value_lr),
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.999),
        eps=1e-5,
    )
    micro = config.micro_batch_size or config.minibatch_size
    n_micro = config.minibatch_size // micro
    accelerator.gradient_accumulation_steps = n_micro
    model, optimizer = accelerator.prepare(wrapper, optimizer)
    accelerator.step = 0

    # Conversations too long for the rollout's prompt budget lose their oldest exchanges
    # (system messages kept) before sample_responses would cut their first tokens.
    limit = prompt_token_limit(getattr(policy, "config", None), config.max_new_tokens, config.max_prompt_length)
    fitted = [fit_prompt(tokenizer, p, limit) for p in prompts]
    context_cut = [f.dropped for f in fitted if f.dropped]
    rendered = shard([f.text for f in fitted], accelerator)
    if not rendered:
        raise ValueError("fewer prompts than processes")
    prompt_batches = _prompt_stream(len(rendered), config.rollout_batch_size, config.seed)
    ptx_batches = None
    if config.ptx_coef > 0:
        if not ptx_examples:
            raise ValueError("ptx_coef > 0 needs ptx_examples")
        enc = [encode_sft_example(tokenizer, ex, config.ptx_max_length) for ex in ptx_examples]
        ptx_batches = _ptx_stream(enc, config.ptx_batch_size, config.seed + 1, pad_id)

    world_batch = config.rollout_batch_size * accelerator.num_processes
    iterations = derive_ppo_iterations(config, len(prompts), accelerator.num_processes)
    kl_ctl = AdaptiveKLController(config.kl_coef, config.target_kl, config.horizon)
    temp = config.temperature

    log = StageMetrics("ppo", on_step, accelerator)
    start = time.perf_counter()
    first_score: float | None = None
    logged: dict[str, float] = {}
    for it in range(1, iterations + 1):
        check_cancel(should_stop)
        kl_coef = kl_ctl.value
        idx = next(prompt_batches)
        batch_prompts = [rendered[i] for i in idx]

        # ---- 1-2. rollout and score -------------------------------------------------
        model.eval()
        unwrapped = accelerator.unwrap_model(model)
        samples: Samples = sample_responses(
            unwrapped.policy,
            tokenizer,
            batch_prompts,
            max_new_tokens=config.max_new_tokens,
            temperature=temp,
            top_p=config.top_p,
            max_prompt_length=config.max_prompt_length,
            autocast=accelerator.autocast,
        )
        mask = samples.response_mask.float()
        P = samples.prompt_len
        with torch.no_grad():
            old_logprobs_l, values_l = [], []
            for i in range(0, len(idx), micro):
                sl = slice(i, i + micro)
                logits, values, _ = model(samples.input_ids[sl], samples.attention_mask[sl], P)
                old_logprobs_l.append(token_logprobs(logits / temp, samples.response_ids[sl]))
                values_l.append(values.float())
                del logits
            old_logprobs = torch.cat(old_logprobs_l) * mask
            values = torch.cat(values_l) * mask
            with accelerator.autocast():
                ref_logprobs = response_logprobs(ref_policy, samples, temp, batch_size=micro) * mask

            raw_scores = torch.as_tensor(
                reward_fn(samples.prompt_texts, samples.response_texts), dtype=torch.float32
            ).to(accelerator.device)
            scores = raw_scores.clone()
            if config.missing_eos_penalty is not None:
                scores = scores + config.missing_eos_penalty * (~samples.has_eos).float()

            # ---- 3. per-token rewards: KL penalty everywhere, score on the last token
            kl = (old_logprobs - ref_logprobs) * mask
            non_score = -kl_coef * kl
            rewards = non_score.clone()
            last = (mask.sum(1).long() - 1).clamp(min=0)
            rewards[torch.arange(len(idx), device=rewards.device), last] += scores
            if config.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False) * mask

            # ---- 4. advantages
            advantages, returns = compute_gae(rewards, values, mask, config.gamma, config.lam)
            if config.whiten_advantages:
                advantages = masked_whiten(advantages, mask) * mask

        # ---- 5. PPO epochs over minibatches
        model.train()
        for _epoch in range(config.ppo_epochs):
            perm = torch.randperm(len(idx), device=accelerator.device)
            for mb_start in range(0, len(idx), config.minibatch_size):
                check_cancel(should_stop)
                mb = perm[mb_start : mb_start + config.minibatch_size]
                for mc_start in range(0, config.minibatch_size, micro):
                    mc = mb[mc_start : mc_start + micro]
                    ptx = None
                    if ptx_batches is not None:
                        ptx = {k: v.to(accelerator.device) for k, v in next(ptx_batches).items()}
                    with accelerator.accumulate(model):
                        m = mask[mc]
                        logits, vpred, ptx_loss = model(samples.input_ids[mc], samples.attention_mask[mc], P, ptx)
                        logits = logits.float() / temp
                        new_logprobs = token_logprobs(logits, samples.response_ids[mc])
                        log_ratio = (new_logprobs - old_logprobs[mc]) * m
                        ratio = torch.exp(log_ratio)
                        adv = advantages[mc]
                        pg1 = -adv * ratio
                        pg2 = -adv * torch.clamp(ratio, 1.0 - config.cliprange, 1.0 + config.cliprange)
                        pg_loss = masked_mean(torch.max(pg1, pg2), m)

                        vpred = vpred.float()
                        v_old = values[mc]
                        v_clipped = v_old + torch.clamp(vpred - v_old, -config.cliprange_value, config.cliprange_value)
                        vf1 = (vpred - returns[mc]) ** 2
                        vf2 = (v_clipped - returns[mc]) ** 2
                        vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), m)

                        loss = pg_loss + config.vf_coef * vf_loss
                        if ptx_loss is not None:
                            loss = loss + config.ptx_coef * ptx_loss
                        backward_and_step(accelerator, model, optimizer, loss, config.max_grad_norm)
                    with torch.no_grad():
                        log.add("policy_loss", pg_loss)
                        log.add("value_loss", vf_loss)
                        log.add("clipfrac", masked_mean((pg2 > pg1).float(), m))
                        log.add("value_clipfrac", masked_mean((vf2 > vf1).float(), m))
                        log.add("approx_kl", 0.5 * masked_mean(log_ratio**2, m))
                        log.add("entropy", masked_mean(entropy_from_logits(logits), m))
                        if ptx_loss is not None:
                            log.add("ptx_loss", ptx_loss)
                    del logits, vpred, loss
        model.eval()

        # ---- 6. metrics (this iteration's means over all processes) and the KL controller
        with torch.no_grad():
            log.add("score", raw_scores.mean())
            log.add("reward", scores.mean())
            log.add("kl", kl.sum(1).mean())
            log.add("non_score_reward", non_score.sum(1).mean())
            log.add("response_length", mask.sum(1).mean())
            log.add("eos_fraction", samples.has_eos.float().mean())
            log.add("return_mean", masked_mean(returns, mask))
            log.add("value_mean", masked_mean(values, mask))
            logged = log.collect()
        elapsed = time.perf_counter() - start
        logged["kl_coef"] = kl_coef
        logged["episodes_per_s"] = it * world_batch / max(elapsed, 1e-9)
        if first_score is None:
            first_score = logged["score"]
        if config.adaptive_kl:
            kl_ctl.update(logged["kl"], world_batch)
        if not math.isfinite(logged["kl"]):
            logger.warning("PPO iteration %d: non-finite KL %s", it, logged["kl"])
        log.emit(it, logged)

    elapsed = time.perf_counter() - start
    result = dict(logged)
    result.update(
        score_first=float(first_score if first_score is not None else float("nan")),
        iterations=float(iterations),
        episodes=float(iterations * world_batch),
        seconds=elapsed,
        final_kl_coef=kl_ctl.value,
        context_cut_examples=float(len(context_cut)),
        context_cut_messages=float(sum(context_cut)),
    )
    logger.info("PPO done: %s", result)
    return result
