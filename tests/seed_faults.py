"""A callback that makes chosen seeds fail, for the launcher's tests: CNNLAB_TEST_FAULTS="0:raise,1:crash"
makes seed 0 raise, seed 1 kill its process (as a segfault or the OOM killer would), `hang` sleeps."""

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
