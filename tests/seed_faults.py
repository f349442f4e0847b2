"""Callbacks that inject faults, for the tests: SeedFaults makes chosen seeds of a sweep fail
(CNNLAB_TEST_FAULTS="0:raise,1:crash": seed 0 raises, seed 1 kills its process as a segfault or the
OOM killer would, `hang` sleeps); FailAtStep stops a run with an error at a given training step."""

import os
import time

from lightning.pytorch import Callback

FAULTS_ENV = "CNNLAB_TEST_FAULTS"


class SeedFaults(Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        faults = dict(item.split(":") for item in os.environ.get(FAULTS_ENV, "").split(",") if item)
        fault = faults.get(os.environ.get("PL_GLOBAL_SEED", ""))
        if fault == "raise":
            raise RuntimeError("injected fault: this seed raises")
        if fault == "crash":
            os._exit(3)
        if fault == "hang":
            time.sleep(3600)


class FailAtStep(Callback):
    """Raise when training reaches `step` (a run that stops unfinished, to be resumed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"injected fault at step {trainer.global_step}")
