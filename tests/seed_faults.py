"""Callbacks that inject faults, for the tests: SeedFaults makes chosen seeds of a sweep fail
(CNNLAB_TEST_FAULTS="0:raise,1:crash": seed 0 raises, seed 1 kills its process as a segfault or the
OOM killer would, `hang` sleeps); FailAtStep stops a run with an error at a given training step;
ThreadProbe writes down how many torch threads a seed's fit and test really ran with."""

import json
import os
import time

import torch
from lightning.pytorch import Callback

FAULTS_ENV = "CNNLAB_TEST_FAULTS"
THREADS_PROBE_ENV = "CNNLAB_TEST_THREADS_PROBE"  # a file; each run appends one JSON line to it


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


class ThreadProbe(Callback):
    """Append {"seed", "stage", "threads", "omp"} to the file named by CNNLAB_TEST_THREADS_PROBE when a
    run's training or test loop starts: torch's thread count as the seed's own steps see it."""

    def _write(self, stage: str) -> None:
        line = {
            "seed": int(os.environ.get("PL_GLOBAL_SEED", "-1")),
            "stage": stage,
            "threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
        }
        with open(os.environ[THREADS_PROBE_ENV], "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        self._write("fit")

    def on_test_start(self, trainer, pl_module) -> None:
        self._write("test")
