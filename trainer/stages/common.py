"""Old home of the stages' shared pieces, kept so that ``from trainer.stages.common import X``
goes on working (tests, benchmarks, scripts). New code imports from the drawer itself:

* ``callbacks`` - ``StepCallback``, ``Cancelled``, ``check_cancel``;
* ``metrics`` - the one metrics path (``StageMetrics``, ``emit``);
* ``optim`` - the optimizer factory, the LR schedule, the optimizer step;
* ``accel`` - the Accelerator, seeding, dropout, gradient checkpointing, shards;
* ``tensors`` - padding, masks, masked statistics, log-probabilities;
* ``sampling`` - ``Samples``, ``sample_responses``, response log-probabilities;
* ``checkpoint`` - weight snapshots, atomic directory writes;
* ``trainer/prompting.py`` - rendering and tokenising prompts (and prompt + response).
"""

from trainer.prompting import (
    Message,
    PromptLike,
    encode_prompt_response,
    pad_token_id,
    prompt_text,
    render_prompt,
)

from .accel import (
    forward_kwargs_supported,
    get_accelerator,
    make_accelerator,
    maybe_gradient_checkpointing,
    model_device,
    seed_everything,
    set_dropout_off,
    shard,
)
from .callbacks import Cancelled, StepCallback, check_cancel
from .checkpoint import atomic_dir
from .metrics import emit
from .optim import backward_and_step, configure_optimizer, lr_lambda, prepare_supervised
from .sampling import Samples, response_logits, response_logprobs, sample_responses
from .tensors import (
    IGNORE_INDEX,
    entropy_from_logits,
    masked_mean,
    masked_whiten,
    pad_left,
    pad_right,
    position_ids_from_mask,
    response_mask_from_eos,
    token_logprobs,
)

build_chat_prompt = render_prompt
"""``build_chat_prompt(tokenizer, prompt, messages)``: :func:`trainer.prompting.render_prompt`."""

__all__ = [
    "IGNORE_INDEX",
    "Cancelled",
    "Message",
    "PromptLike",
    "Samples",
    "StepCallback",
    "atomic_dir",
    "backward_and_step",
    "build_chat_prompt",
    "check_cancel",
    "configure_optimizer",
    "emit",
    "encode_prompt_response",
    "entropy_from_logits",
    "forward_kwargs_supported",
    "get_accelerator",
    "lr_lambda",
    "make_accelerator",
    "masked_mean",
    "masked_whiten",
    "maybe_gradient_checkpointing",
    "model_device",
    "pad_left",
    "pad_right",
    "pad_token_id",
    "position_ids_from_mask",
    "prepare_supervised",
    "prompt_text",
    "response_logits",
    "response_logprobs",
    "response_mask_from_eos",
    "sample_responses",
    "seed_everything",
    "set_dropout_off",
    "shard",
    "token_logprobs",
]
