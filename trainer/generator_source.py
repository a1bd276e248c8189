"""Where the samplers get a policy's generator, and how they let it go.

:class:`trainer.sampler.Sampler` (labeling completions) and
:class:`trainer.eval_sampler.EvaluationSampler` (evaluation samples) both hold one loaded
generator at a time: built by the test's ``generator_factory`` when one is given, else by
:func:`trainer.generation.make_generator` (vLLM or transformers), and closed when the
policy changes. Torch is imported only when a generator is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.db import Database

logger = logging.getLogger(__name__)

GeneratorFactory = Callable[..., Any]
"""``factory(path, device=..., prefer_vllm=...) -> generator`` (tests pass fakes)."""


class GeneratorSource:
    """The database, settings and generator options a sampler was built with."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        device: Any = None,
        prefer_vllm: bool = True,
        generator_factory: GeneratorFactory | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.device = device
        self.prefer_vllm = prefer_vllm
        self._factory = generator_factory

    def _make_generator(self, path: Any, **kwargs: Any) -> Any:
        """A generator for the policy at ``path`` (``kwargs``, e.g. ``seed``, go to
        ``make_generator``; a test's factory does not take them)."""
        if self._factory is not None:
            return self._factory(path, device=self.device, prefer_vllm=self.prefer_vllm)
        from trainer.generation import make_generator

        return make_generator(path, device=self.device, prefer_vllm=self.prefer_vllm, **kwargs)


def close_generator(generator: Any, what: str) -> None:
    """Call the generator's ``close()`` if it has one; a failure is logged, not raised."""
    close = getattr(generator, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001
            logger.exception("%s: closing the generator failed", what)
