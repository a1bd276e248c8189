"""One training round, as InstructGPT: SFT -> reward model -> PPO (or DPO) -> evaluate -> register.

:func:`run_round` runs the phases of trainer/round/phases.py in order; each stage returns a
:class:`StageOutcome` (ran, with its metrics and artifact, or skipped with the reason). The
round never silently makes things worse:

1. **Snapshot** (``job.py``). The ids of the active rankings and demonstrations of the
   round's sets created before the run started are fixed (trainer/data.py); a retry reuses them.
2. **SFT** (``policy_stages.sft``) on the demonstrations the starting policy's lineage has
   not been fine-tuned on (``sft_demonstrations: new``), from the deployed policy. Skipped
   with the reason when there are fewer than ``sft_min_demonstrations``.
3. **RM** (``reward_stage.train``) from the SFT model with a scalar head (or warm-started
   from the previous RM, ``rm_init``), trained until held-out accuracy stops improving,
   best epoch kept; the bias is set so demonstrations (else policy samples) score mean 0;
   published as ``reward_models/vN`` (``register.register_reward_model``). Then the **RM
   gate** (``reward_stage.gate``, trainer/gates.py): PPO runs only on an RM above chance on
   held-out rankings. A round without the RM stage reuses the latest registered RM.
4. **SFT selection by reward** (``epochs.py``): when SFT ran several epochs and the RM is
   usable, the epoch whose validation samples the RM scores best is kept (InstructGPT).
5. **PPO** (``policy_stages.ppo``) from the SFT policy against the RM, with the KL
   reference ``ppo_kl_reference``; or **DPO** on the same rankings (``stages: ["sft", "dpo"]``).
6. **Evaluate** (``evaluation.py``) the new policy against its parent (and v0) under the
   RM, with intervals.
7. **Promote** (``register.promote``): the policy is written to a staging directory,
   published as ``policies/vN`` (trainer/artifacts.py numbers and renames it) and
   registered in the transaction that ends the run. ``deploy: true`` deploys it only
   through the **deploy gate**; ``"force"`` always. With ``evaluate_with_humans`` the round
   opens a human evaluation of it against its parent instead, and the verdict deploys or
   refuses it later (app/services/human_gate.py). A worker killed at any point leaves at
   most an unregistered directory.

The run's bookkeeping (lease, heartbeat, cancel, progress, metrics, and recording how it
ended) is trainer/run_control.py; the exceptions that end a run early are listed in
trainer/run_endings.py.

Importing this package does not import torch (the worker imports it to dispatch rounds);
the training modules are loaded on the first :func:`run_round`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.round.outcome import StageOutcome
from trainer.run_control import RunControl
from trainer.run_endings import LeaseLost, RoundError, RoundResult

if TYPE_CHECKING:
    from app.config import Settings
    from app.db import Database

__all__ = ["LeaseLost", "RoundError", "RoundResult", "RunControl", "StageOutcome", "run_round"]


def run_round(database: Database, settings: Settings, control: RunControl) -> RoundResult:
    """Run the leased round to its end and record the outcome (trainer/round/phases.py)."""
    from trainer.round.phases import run_round as run_phases  # loads torch and the stages

    return run_phases(database, settings, control)
