"""A callback for benchmarks/startup_time.py: note the time of the first training step, then stop."""

import os
import time

from lightning.pytorch import Callback


class FirstStepProbe(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(os.environ["CNNLAB_PROBE_FILE"], "w") as handle:
            handle.write(repr(time.time()))
        os._exit(0)
