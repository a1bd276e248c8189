"""The trainer's Accelerator factory copes with a process where another library set accelerate up."""
from __future__ import annotations

from accelerate import Accelerator
from accelerate.state import AcceleratorState

from trainer.stages.common import make_accelerator


def test_make_accelerator_replaces_a_bf16_state_left_by_another_library() -> None:
    # transformers' Trainer and TRL's trainers default to bf16 and leave that in accelerate's
    # process-wide state; a plain Accelerator(mixed_precision="no") then refuses to start.
    AcceleratorState._reset_state(reset_partial_state=True)
    Accelerator(cpu=True, mixed_precision="bf16")
    assert AcceleratorState().mixed_precision == "bf16"

    accelerator = make_accelerator("cpu")

    assert accelerator.mixed_precision == "no"
    assert accelerator.device.type == "cpu"


def test_make_accelerator_reuses_a_matching_state() -> None:
    first = make_accelerator("cpu")
    second = make_accelerator("cpu")
    assert first.state is not None and second.mixed_precision == "no"
    assert AcceleratorState._shared_state  # not torn down between two matching builds
