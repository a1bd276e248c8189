"""One rank of a launched round: ``<launcher> -m trainer.launch_round --run-id N --worker-id W --attempt A``.

The worker (trainer/launch.py) starts this through the configured launcher and keeps the
claim, heartbeat, cancel and requeue duties itself. Each rank joins the process group
(gloo on CPUs, NCCL on GPUs, set up by Accelerate from the launcher's environment), reads
the run row under the worker's lease (the same snapshot and config on every rank) and
runs :func:`trainer.round.run_round`; only the main process writes progress, metrics,
logs and artifacts and registers (``RunControl(writer=...)``).

Exit codes: 0 when the main process recorded success (or a non-main rank finished);
3 (:data:`trainer.launch.RECORDED_FAILURE`) when it recorded a failed or cancelled run;
1 on any other error (a rank's error, a dead peer): the worker then requeues the attempt.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.launch_round", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    args = parser.parse_args(argv)

    from app.config import Settings
    from app.db import Database
    from app.services.workers import Lease

    settings = Settings()
    if settings.torch_threads is not None:
        from trainer.device import set_torch_threads

        set_torch_threads(settings.torch_threads)
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # joins the launcher's process group
    logging.basicConfig(
        level=logging.INFO if state.is_main_process else logging.WARNING,
        format=f"%(asctime)s rank{state.process_index} %(levelname)s %(name)s: %(message)s",
    )
    from trainer.launch import RECORDED_FAILURE
    from trainer.round import run_round
    from trainer.run_control import RunControl

    database = Database(settings.resolved_database_url)
    control = RunControl(database, Lease(args.run_id, args.worker_id, args.attempt), writer=state.is_main_process)
    try:
        result = run_round(database, settings, control)
    except BaseException:
        logging.getLogger(__name__).exception("rank %d of run %d failed", state.process_index, args.run_id)
        return 1
    finally:
        database.dispose()
    if state.is_main_process and result.status in ("failed", "cancelled"):
        return RECORDED_FAILURE
    return 1 if result.status in ("lost", "requeued") and state.is_main_process else 0


if __name__ == "__main__":
    sys.exit(main())
