"""Training stages of a round (SFT, reward model, PPO, evaluation) as plain functions.

No database code lives here: each stage takes models, a tokenizer, examples and a config,
reports metrics through ``on_step(stage, step, metrics)``, stops when ``should_stop()``
says so (raising :class:`Cancelled`), and returns a dict of float metrics. The round
(trainer/round/) wires them into a run. See docs/training.md.

The toolbox they share, a drawer per concern:

* ``callbacks``: the step callback, cancellation;
* ``metrics``: the one metrics path every stage feeds (``StageMetrics``);
* ``optim``: the optimizer factory, the LR schedule, the optimizer step;
* ``accel``: Accelerate, seeding, dropout, gradient checkpointing, shards;
* ``tensors``: padding, masks, masked statistics, log-probabilities;
* ``sampling``: rollouts and their log-probabilities;
* ``checkpoint``: weight snapshots, atomic directories.

The stages: ``sft``, ``reward`` (training on rankings) with ``reward_model`` (the model,
its files, scoring), ``ppo``, ``dpo``, ``evaluate``. Prompts are rendered and tokenised in
trainer/prompting.py. ``common`` only re-exports these names for older imports.
"""

from trainer.config import DPOConfig, EvalConfig, PPOConfig, RMConfig, SFTConfig
from trainer.prompting import render_prompt as build_chat_prompt

from .accel import set_dropout_off
from .callbacks import Cancelled, StepCallback, check_cancel
from .dpo import train_dpo
from .evaluate import EvalParams, evaluate_policies
from .ppo import train_ppo
from .reward import RankingExample, pairs_from_ranking, train_reward_model
from .reward_model import RewardModel, normalize_reward_bias, reward_fn_from_model, score
from .sft import SFTExample, train_sft

__all__ = [
    "Cancelled",
    "DPOConfig",
    "EvalConfig",
    "EvalParams",
    "PPOConfig",
    "RMConfig",
    "RankingExample",
    "RewardModel",
    "SFTConfig",
    "SFTExample",
    "StepCallback",
    "build_chat_prompt",
    "check_cancel",
    "evaluate_policies",
    "normalize_reward_bias",
    "pairs_from_ranking",
    "reward_fn_from_model",
    "score",
    "set_dropout_off",
    "train_dpo",
    "train_ppo",
    "train_reward_model",
    "train_sft",
]
