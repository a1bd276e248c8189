"""Every hyper-parameter of a training round, declared once.

Each stage has one config dataclass here (``SFTConfig``, ``RMConfig``, ``PPOConfig``,
``DPOConfig``, ``EvalConfig``, ``GateConfig``, ``HumanEvalConfig``, and the round's ``TrackingConfig``); a field's metadata carries its help text,
bounds and choices. The stage functions in trainer/stages take these dataclasses; the
web tier derives from them, through :data:`ROUND_KEYS`, the round config schema
(``GET /api/v1/training/config``), its validation (:func:`validate_round_config`) and the
dashboard's "config keys and defaults" list. Adding a field to a stage config adds it
everywhere.

Defaults are for real runs: a SmolLM2-135M-class policy and the data a small team
collects in a day (30-300 rankings). Sizes that depend on the data are derived at run
time (:func:`derive_ppo_iterations`, the RM's patience, the step floors); tests pass
their own small configs.

This module must not import torch: app/ imports it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

ROUND_SEED_KEY = "seed"

#: ``SFTConfig.assistant_turns``: which assistant turns of a conversation demonstration carry loss.
ASSISTANT_TURNS = ("last", "all")


def param(
    default: Any,
    help: str,
    *,
    min: float | None = None,  # noqa: A002 - reads as the bound it is
    max: float | None = None,  # noqa: A002
    choices: tuple[str, ...] | None = None,
    key: str | None = None,
    round: bool = True,  # noqa: A002
) -> Any:
    """A config field with its help text, inclusive bounds and choices in the metadata.

    ``key`` overrides the round config key (default ``<stage prefix>_<field name>``);
    ``round=False`` keeps the field out of the round config (set by the round itself).
    """
    meta = {"help": help, "min": min, "max": max, "choices": choices, "key": key, "round": round}
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SFTConfig:
    """Stage 1: supervised fine-tuning on demonstrations (loss on response tokens only)."""

    lr: float = param(1e-5, "SFT learning rate", min=0, max=1)
    epochs: int = param(
        2, "passes over the demonstrations (more are made, up to sft_max_epochs, to reach sft_min_steps)",
        min=1, max=100,
    )
    min_steps: int = param(8, "floor on optimizer steps: small data sets get more passes", min=0, max=100000)
    max_epochs: int = param(4, "cap on passes when sft_min_steps asks for more", min=1, max=100)
    batch_size: int = param(4, "demonstrations per optimizer step", min=1, max=4096)
    grad_accum: int = param(1, "micro-batches per optimizer step", min=1, max=1024)
    max_length: int = param(512, "tokens per prompt + demonstration", min=16, max=32768)
    assistant_turns: str = param(
        "last",
        "which assistant turns of a conversation demonstration carry loss: last = only the written reply; "
        "all = every assistant turn of the conversation (system and user turns never do)",
        choices=ASSISTANT_TURNS,
    )
    weight_decay: float = param(0.0, "AdamW weight decay", min=0, max=1)
    warmup_ratio: float = param(0.03, "share of steps with a linear learning-rate warmup", min=0, max=0.5)
    lr_schedule: str = param("cosine", "learning-rate decay after warmup", choices=("constant", "linear", "cosine"))
    max_grad_norm: float = param(1.0, "gradient clipping norm", min=0)
    eval_batch_size: int = param(8, "demonstrations per validation-loss batch", min=1, max=4096)
    min_demonstrations: int = param(4, "fewer new demonstrations than this skip SFT", min=1)
    demonstrations: str = param(
        "new",
        "new: only demonstrations the starting policy's lineage has not been fine-tuned on; all: every one",
        choices=("new", "all"),
    )
    select_by_reward: bool = param(
        True,
        "when the round also trains an RM: keep the SFT epoch whose validation samples the new RM scores best "
        "(InstructGPT), instead of the last epoch",
    )
    seed: int = param(0, "random seed", round=False)

    def __post_init__(self) -> None:
        if self.assistant_turns not in ASSISTANT_TURNS:
            raise ValueError(
                f"assistant_turns must be one of {', '.join(ASSISTANT_TURNS)}, not {self.assistant_turns!r}"
            )


@dataclass
class RMConfig:
    """Stage 2: the K-way reward model. ``mode="pairwise"`` exists for the benchmark."""

    lr: float = param(2e-5, "reward-model learning rate", min=0, max=1)
    epochs: int = param(
        6, "most passes over the rankings; training stops earlier when held-out accuracy stops improving "
        "(rm_patience) and keeps the best epoch", min=1, max=100,
    )
    patience: int = param(2, "epochs without a better held-out accuracy before the RM stops", min=1, max=100)
    min_steps: int = param(24, "floor on optimizer steps before early stopping may end training", min=0, max=100000)
    rankings_per_batch: int = param(4, "rankings (all their K choose 2 pairs) per optimizer step", min=1, max=4096)
    grad_accum: int = param(1, "micro-batches per optimizer step", min=1, max=1024)
    max_length: int = param(512, "tokens per prompt + completion", min=16, max=32768)
    weight_decay: float = param(0.0, "AdamW weight decay", min=0, max=1)
    trainable_layers: int | None = param(
        None, "decoder layers trained, counted from the top (with the final norm and the score head); the "
        "embeddings and the layers below stay frozen. null = all layers; 0 = the head and final norm only",
        min=0, max=1000,
    )
    warmup_ratio: float = param(0.03, "share of steps with a linear learning-rate warmup", min=0, max=0.5)
    lr_schedule: str = param("cosine", "learning-rate decay after warmup", choices=("constant", "linear", "cosine"))
    max_grad_norm: float = param(1.0, "gradient clipping norm", min=0)
    eval_rankings_per_batch: int = param(8, "rankings per held-out evaluation batch", min=1, max=4096)
    unacceptable: str = param("keep", "rankings flagged all-unacceptable: keep or skip", choices=("keep", "skip"))
    min_rankings: int = param(8, "fewer usable training rankings than this skip the RM stage", min=1)
    holdout_fraction: float = param(
        0.15, "share of train rankings held out when no validation ranking exists", min=0, max=0.5
    )
    normalize_examples: int = param(64, "demonstrations (or policy samples) that set the reward bias", min=1)
    init: str = param(
        "auto",
        "auto: start from the previous round's RM (same base) when it beats a fresh head on held-out rankings; "
        "scratch: always a fresh head on the SFT model; previous: always the previous RM when there is one",
        choices=("auto", "scratch", "previous"),
    )
    gate_min_accuracy: float | None = param(
        None,
        "PPO runs only on an RM above chance: null = the lower end of the Wilson interval of held-out "
        "pairwise accuracy must exceed 0.5; a number = the held-out accuracy must reach it (0 turns the gate off)",
        min=0, max=1,
    )
    gate_confidence: float = param(0.95, "confidence of the RM gate's interval", min=0.5, max=0.999)
    include_evaluations: bool = param(
        False,
        "also train on the judgments of human evaluations of the round's sets (A or B preferred: one pair each; "
        "ties and both-bad give none), as training pairs whatever the prompt's split; false keeps evaluations held out",
    )
    mode: str = param("kway", "kway: K forwards per ranking; pairwise: 2 per pair", choices=("kway", "pairwise"),
                      round=False)
    seed: int = param(0, "random seed", round=False)
    extra: dict[str, Any] = param({}, "free-form extras", round=False)


@dataclass
class PPOConfig:
    """Stage 3: PPO against the reward model (InstructGPT, TRL's PPO trainer).

    ``rollout_batch_size`` prompts are sampled per iteration and process; the update runs
    ``ppo_epochs`` passes over minibatches of ``minibatch_size`` (each optionally split
    into micro-batches of ``micro_batch_size``). The number of iterations is derived from
    the prompts (:func:`derive_ppo_iterations`) unless ``iterations`` or
    ``total_episodes`` is set. ``missing_eos_penalty`` is *added* to the score of a
    response without EOS, so it must be negative or None (off). ``max_new_tokens`` and
    ``temperature`` left at None take the prompt set's own sampling settings, so rollouts
    look like what the labelers ranked.
    """

    lr: float = param(1e-5, "policy learning rate", min=0, max=1)
    value_lr: float | None = param(None, "value-model learning rate (null: ppo_lr)", min=0, max=1)
    kl_coef: float = param(0.05, "per-token KL penalty (beta) to the KL reference policy", min=0)
    adaptive_kl: bool = param(False, "adapt beta towards ppo_target_kl (Ziegler et al.)")
    target_kl: float = param(6.0, "KL per episode the adaptive controller aims at (nats)", min=0)
    horizon: int = param(10000, "episodes over which the adaptive controller adjusts beta", min=1)
    kl_reference: str = param(
        "start",
        "the policy the KL penalty pulls towards: start = this round's SFT (or starting) policy; first_sft = the "
        "lineage's first SFT policy; v0 = the lineage's base policy. Pin it (first_sft/v0) to keep KL from v0 "
        "bounded over many rounds",
        choices=("start", "first_sft", "v0"),
    )
    gamma: float = param(1.0, "GAE discount", min=0, max=1)
    lam: float = param(0.95, "GAE lambda", min=0, max=1)
    cliprange: float = param(0.2, "policy ratio clip range", min=0, max=10)
    cliprange_value: float = param(0.2, "value clip range", min=0)
    vf_coef: float = param(0.1, "weight of the value loss", min=0)
    ppo_epochs: int = param(2, "passes over each rollout", min=1, max=64, key="ppo_epochs")
    rollout_batch_size: int = param(8, "prompts sampled per iteration", min=1, max=4096)
    minibatch_size: int = param(4, "episodes per PPO minibatch (divides the rollout batch)", min=1)
    micro_batch_size: int | None = param(None, "episodes per forward (null: the minibatch)", min=1)
    iterations: int | None = param(
        None, "rollout + update iterations (null: derived from the train prompts, see ppo_episodes_per_prompt)",
        min=1, max=100000,
    )
    episodes_per_prompt: float = param(
        2.0, "episodes per train prompt when the iterations are derived", min=0.01, max=1000
    )
    min_episodes: int = param(48, "floor on derived episodes", min=1)
    max_episodes: int = param(512, "cap on derived episodes", min=1)
    total_episodes: int | None = param(None, "episodes in all (overrides ppo_iterations)", min=1, round=False)
    max_new_tokens: int | None = param(
        None, "tokens sampled per rollout (null: the prompt set's max_new_tokens)", min=1, max=8192
    )
    max_prompt_length: int = param(512, "prompt tokens kept (from the left)", min=8, max=32768)
    temperature: float | None = param(
        None, "rollout temperature (null: the prompt set's)", min=0.01, max=10
    )
    top_p: float = param(
        1.0, "rollout nucleus sampling (1.0 keeps the sampled distribution the one PPO's ratio and KL use)",
        min=0.01, max=1,
    )
    missing_eos_penalty: float | None = param(
        None, "added to the score of a rollout cut at max_new_tokens (negative; null = off: the labelers "
        "ranked cut completions too)", min=-100, max=0,
    )
    whiten_advantages: bool = param(True, "normalise advantages per rollout")
    whiten_rewards: bool = param(False, "normalise per-token rewards per rollout")
    ptx_coef: float = param(0.0, "weight of the PPO-ptx LM loss on demonstrations", min=0)
    ptx_batch_size: int = param(4, "demonstrations per PPO-ptx batch", min=1)
    ptx_max_length: int = param(512, "tokens per PPO-ptx demonstration", min=16, max=32768)
    max_grad_norm: float = param(1.0, "gradient clipping norm", min=0)
    weight_decay: float = param(0.0, "AdamW weight decay", min=0, max=1)
    max_prompts: int = param(256, "train prompts PPO draws from", min=1)
    seed: int = param(0, "random seed", round=False)

    def __post_init__(self) -> None:
        if self.missing_eos_penalty is not None and self.missing_eos_penalty > 0:
            raise ValueError("missing_eos_penalty is added to the score: use a negative value (or None)")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError("PPO samples: temperature must be > 0")
        micro = self.micro_batch_size or self.minibatch_size
        if self.minibatch_size % micro:
            raise ValueError("minibatch_size must be a multiple of micro_batch_size")
        if self.rollout_batch_size % self.minibatch_size:
            raise ValueError("rollout_batch_size must be a multiple of minibatch_size")


@dataclass
class DPOConfig:
    """Direct preference optimisation on the rankings' pairs (Rafailov et al.; TRL's DPOTrainer
    defaults: beta 0.1, sigmoid loss, learning rate 1e-6 for full models; we use more for
    the small data of a round)."""

    beta: float = param(0.1, "DPO temperature: how far from the reference the policy may move", min=0, max=10)
    lr: float = param(5e-6, "DPO learning rate", min=0, max=1)
    epochs: int = param(2, "passes over the preference pairs", min=1, max=100)
    min_steps: int = param(16, "floor on optimizer steps: small data sets get more passes", min=0, max=100000)
    max_epochs: int = param(6, "cap on passes when dpo_min_steps asks for more", min=1, max=100)
    rankings_per_batch: int = param(4, "rankings (all their pairs) per optimizer step", min=1, max=4096)
    max_length: int = param(512, "tokens per prompt + completion", min=16, max=32768)
    label_smoothing: float = param(0.0, "conservative DPO: assumed share of flipped labels", min=0, max=0.5)
    warmup_ratio: float = param(0.1, "share of steps with a linear learning-rate warmup", min=0, max=0.5)
    max_grad_norm: float = param(1.0, "gradient clipping norm", min=0)
    seed: int = param(0, "random seed", round=False)


@dataclass
class EvalConfig:
    """Stage 4: the new policy against its parent (and v0) on validation prompts."""

    prompts: int = param(64, "validation prompts the evaluation samples", min=1, key="eval_prompts")
    samples_per_prompt: int = param(4, "samples per prompt and policy (common random numbers)", min=1, max=64)
    max_new_tokens: int | None = param(
        None, "tokens per evaluation sample (null: the prompt set's max_new_tokens)", min=1, max=8192
    )
    temperature: float | None = param(None, "evaluation temperature (null: the prompt set's)", min=0.01, max=10)
    top_p: float = param(1.0, "evaluation nucleus sampling (1.0: the KL estimate needs the full distribution)",
                         min=0.01, max=1)
    batch_size: int = param(16, "sequences per generate call", min=1, max=4096)
    max_prompt_length: int = param(512, "prompt tokens kept (from the left)", min=8, max=32768, round=False)
    seed: int = param(1234, "sampling seed", round=False)


@dataclass
class GateConfig:
    """When ``deploy: true`` deploys the new policy: only when the evaluation does not show
    it worse than its parent. Each check refuses on evidence of harm, not on a lack of
    proof of improvement, so small validation sets do not block every round."""

    min_score_delta: float = param(
        0.0, "refuse when the upper end of the interval of (new - parent) mean RM score is below this"
    )
    min_win_rate: float = param(
        0.5, "refuse when the upper end of the Wilson interval of the win rate against the parent is below this",
        min=0, max=1,
    )
    max_kl: float = param(10.0, "refuse when the KL from the parent (nats per response) is above this budget", min=0)
    confidence: float = param(0.95, "confidence of the gates' intervals", min=0.5, max=0.999)


@dataclass
class HumanEvalConfig:
    """``evaluate_with_humans``: the round registers its new policy, keeps the parent
    deployed, and opens a blind human evaluation of new vs parent on the validation split
    of its prompt sets (app/services/human_gate.py). When every comparison has its
    judgments (or an admin closes the evaluation), the verdict deploys the new policy
    (the round's ``deploy: true``) or refuses it; the RM's score and win-rate checks are
    then advisory, the KL budget still applies."""

    enabled: bool = param(
        False,
        "deploy only after a blind human evaluation of the new policy against its parent on the validation split "
        "(the parent keeps serving until the verdict)",
        key="evaluate_with_humans",
    )
    threshold: float = param(
        0.5, "the human deploy gate: the new policy's win rate against its parent (ties count half) must reach this",
        min=0, max=1,
    )
    prompts: int | None = param(100, "validation prompts the human evaluation uses at most (null: all)", min=1)
    per_pair: int = param(1, "comparisons per prompt in the human evaluation", min=1, max=20)
    overlap: int = param(1, "labelers per comparison in the human evaluation", min=1, max=50)


#: The experiment trackers a round can report to (Accelerate's tracker names).
TRACKERS = ("tensorboard", "mlflow", "wandb")


@dataclass
class TrackingConfig:
    """Where a round reports besides the database (trainer/tracking.py). A list-of-choices
    field: the value is a list whose items are each one of ``choices``."""

    report_to: list[str] | None = param(
        None,
        "experiment trackers the round reports to (a list of tensorboard, mlflow, wandb; [] = none); "
        "null: the worker's RLHF_REPORT_TO",
        choices=TRACKERS, key="report_to",
    )


#: The round config's sections: key prefix -> stage config class.
SECTIONS: dict[str, type] = {
    "sft": SFTConfig,
    "rm": RMConfig,
    "ppo": PPOConfig,
    "dpo": DPOConfig,
    "eval": EvalConfig,
    "deploy": GateConfig,
    "human_eval": HumanEvalConfig,
    "tracking": TrackingConfig,
}


@dataclass(frozen=True)
class RoundKey:
    """One key of a round's flat config, derived from a stage config field."""

    name: str
    section: str  # "" for the round's own keys (seed)
    field: str
    default: Any
    type: type
    nullable: bool
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def many(self) -> bool:
        """A list-valued key (each item checked against ``choices``)."""
        return self.type is list

    @property
    def type_name(self) -> str:
        if self.many:
            return "choice list" if self.choices else "list"
        return "choice" if self.choices else self.type.__name__


def _field_type(cls: type, name: str) -> tuple[type, bool]:
    hint = get_type_hints(cls)[name]
    args = [a for a in get_args(hint) if a is not type(None)]
    nullable = type(None) in get_args(hint)
    base = args[0] if args else hint
    return get_origin(base) or base, nullable


def _round_keys() -> dict[str, RoundKey]:
    keys = {
        ROUND_SEED_KEY: RoundKey(ROUND_SEED_KEY, "", "seed", 0, int, False, "random seed of every stage", minimum=0)
    }
    for prefix, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta.get("round", True):
                continue
            typ, nullable = _field_type(cls, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            name = meta.get("key") or f"{prefix}_{f.name}"
            if name in keys:
                raise RuntimeError(f"round config key {name} is declared twice")
            keys[name] = RoundKey(
                name=name, section=prefix, field=f.name, default=default, type=typ, nullable=nullable,
                help=meta.get("help", ""), minimum=meta.get("min"), maximum=meta.get("max"),
                choices=meta.get("choices"),
            )
    return keys


#: Every key a round's ``config`` may set, derived from the stage configs above.
ROUND_KEYS: dict[str, RoundKey] = _round_keys()


class ConfigError(ValueError):
    """A round config that names an unknown key or a bad value (the message says which)."""


def _check_value(key: RoundKey, value: Any) -> Any:
    name = key.name
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(f"config {name} cannot be null")
    if key.many:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {name} must be a list of strings")
        bad = [v for v in value if key.choices is not None and v not in key.choices]
        if bad:
            raise ConfigError(f"config {name}: {', '.join(map(repr, bad))} not among {', '.join(key.choices or ())}")
        return list(dict.fromkeys(value))  # each once, in the given order
    if key.choices is not None:
        if value not in key.choices:
            raise ConfigError(f"config {name} must be one of {', '.join(key.choices)}")
        return value
    if key.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {name} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"config {name} must be a number")
    if not math.isfinite(float(value)):
        raise ConfigError(f"config {name} must be a finite number")
    if key.type is int:
        if float(value) != int(value):
            raise ConfigError(f"config {name} must be a whole number")
        value = int(value)
    else:
        value = float(value)
    if key.minimum is not None and value < key.minimum:
        raise ConfigError(f"config {name} must be at least {key.minimum:g}")
    if key.maximum is not None and value > key.maximum:
        raise ConfigError(f"config {name} must be at most {key.maximum:g}")
    return value


def validate_round_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Check a round's flat config; returns the given keys, normalised. Raises :class:`ConfigError`.

    Beyond each key's type and bounds, the combination must build valid stage configs
    (e.g. the rollout batch a multiple of the minibatch).
    """
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError("config must be a JSON object")
    unknown = sorted(set(config) - set(ROUND_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (known: {', '.join(ROUND_KEYS)})")
    clean = {name: _check_value(ROUND_KEYS[name], value) for name, value in config.items()}
    merged = {**round_defaults(), **clean}
    if merged["ppo_rollout_batch_size"] % merged["ppo_minibatch_size"]:
        raise ConfigError("config ppo_rollout_batch_size must be a multiple of ppo_minibatch_size")
    try:
        stage_configs(clean)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: {exc}") from exc
    return clean


def round_defaults() -> dict[str, Any]:
    """``key -> default`` for every round config key."""
    return {name: key.default for name, key in ROUND_KEYS.items()}


@dataclass
class StageConfigs:
    """A round's config as the stage dataclasses (seed applied to each)."""

    seed: int
    sft: SFTConfig
    rm: RMConfig
    ppo: PPOConfig
    dpo: DPOConfig
    eval: EvalConfig
    deploy: GateConfig
    human_eval: HumanEvalConfig
    tracking: TrackingConfig


def stage_configs(config: dict[str, Any] | None) -> StageConfigs:
    """Build the stage configs of a round from its flat config (defaults for missing keys)."""
    merged = {**round_defaults(), **(config or {})}
    seed = int(merged[ROUND_SEED_KEY])
    values: dict[str, dict[str, Any]] = {prefix: {} for prefix in SECTIONS}
    for name, key in ROUND_KEYS.items():
        if key.section:
            values[key.section][key.field] = merged[name]
    built: dict[str, Any] = {}
    for prefix, cls in SECTIONS.items():
        kwargs = values[prefix]
        if "seed" in {f.name for f in dataclasses.fields(cls)}:
            # The evaluation draws with its own stream, apart from training's.
            kwargs["seed"] = seed + EvalConfig.seed if prefix == "eval" else seed
        built[prefix] = cls(**kwargs)
    return StageConfigs(seed=seed, **built)


def with_sampling(cfg: Any, sampling: dict[str, Any]) -> Any:
    """``cfg`` with its None ``max_new_tokens`` / ``temperature`` taken from a
    prompt set's sampling settings (the labelers' view of the policy)."""
    updates = {
        name: sampling[name]
        for name in ("max_new_tokens", "temperature")
        if getattr(cfg, name, 0) is None and sampling.get(name) is not None
    }
    return dataclasses.replace(cfg, **updates) if updates else cfg


def epochs_for(n_items: int, batch_size: int, grad_accum: int, epochs: int, min_steps: int, max_epochs: int) -> int:
    """Passes over ``n_items`` so that the optimizer steps reach ``min_steps`` (the step
    floor), never fewer than ``epochs`` nor more than ``max(epochs, max_epochs)``."""
    steps_per_epoch = max(1, math.ceil(math.ceil(n_items / batch_size) / grad_accum))
    needed = math.ceil(min_steps / steps_per_epoch) if min_steps > 0 else 1
    return max(epochs, min(max(epochs, max_epochs), needed))


def derive_ppo_iterations(cfg: PPOConfig, n_prompts: int, processes: int = 1) -> int:
    """PPO iterations: ``iterations`` when set, else ``total_episodes``, else
    ``episodes_per_prompt x prompts`` clamped to ``[min_episodes, max_episodes]``."""
    world_batch = cfg.rollout_batch_size * max(1, processes)
    if cfg.iterations is not None:
        return int(cfg.iterations)
    if cfg.total_episodes is not None:
        return max(1, math.ceil(cfg.total_episodes / world_batch))
    episodes = min(cfg.max_episodes, max(cfg.min_episodes, round(cfg.episodes_per_prompt * n_prompts)))
    return max(1, math.ceil(episodes / world_batch))


def markdown_table() -> str:
    """The round config keys as the Markdown table in docs/trainer.md (regenerate it with
    ``python -m trainer.config``; a test checks the docs hold this exact table)."""

    def shown(value: Any) -> str:
        if value is None:
            return "null (derived)"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return f"`{value}`"
        if isinstance(value, list):
            return f"`{value!r}`"
        return f"{value:g}" if isinstance(value, float) else str(value)

    rows = ["| key | default | range | meaning |", "| --- | --- | --- | --- |"]
    for key in ROUND_KEYS.values():
        if key.choices:
            bounds = ("list of " if key.many else "") + " \\| ".join(key.choices)
        elif key.minimum is not None or key.maximum is not None:
            lo = "" if key.minimum is None else f"{key.minimum:g}"
            hi = "" if key.maximum is None else f"{key.maximum:g}"
            bounds = f"{lo}..{hi}"
        else:
            bounds = ""
        rows.append(f"| `{key.name}` | {shown(key.default)} | {bounds} | {key.help.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
