"""Callbacks that watch what a run really does, for tests that observe behaviour instead of reading a
config value back. Each writes what it saw to `<run output dir>/spy.json`."""

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback


def _write(trainer, key: str, value) -> None:
    path = Path(trainer.default_root_dir) / "spy.json"
    seen = json.loads(path.read_text()) if path.is_file() else {}
    seen[key] = value
    path.write_text(json.dumps(seen))


class AugmentationSpy(Callback):
    """The share of the first training batch's images that are exactly the stored training images as
    evaluation would feed them (no augmentation): 1.0 without augmentation, near 0 with it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx:
            return
        images, _ = trainer.datamodule.samples("train")
        plain = {bytes(x.numpy().tobytes()) for x in trainer.datamodule.model_input(images).float()}
        seen = [bytes(x.detach().float().cpu().numpy().tobytes()) in plain for x in batch[0]]
        _write(trainer, "unchanged_share", sum(seen) / len(seen))


class DtypeSpy(Callback):
    """The dtype of the network's output during a training step (autocast changes it)."""

    def on_train_start(self, trainer, pl_module) -> None:
        def hook(module, inputs, output) -> None:
            _write(trainer, "training_output_dtype", str(output.dtype))
            self.handle.remove()

        self.handle = pl_module.net.register_forward_hook(hook)
        _write(trainer, "autocast_enabled_on_cpu", torch.is_autocast_cpu_enabled())


class FillDisk(Callback):
    """Fills the disk that holds `path` at the start of training epoch `epoch`, leaving `leave` bytes
    free: the next checkpoint does not fit, as on a disk that filled up during a long run."""

    def __init__(self, path: str, epoch: int = 1, leave: int = 16384) -> None:
        self.path, self.epoch, self.leave = Path(path), epoch, leave

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            return
        import shutil

        free = shutil.disk_usage(self.path.parent).free
        with open(self.path, "wb") as handle:
            handle.write(b"\0" * max(0, free - self.leave))


class SlowEvaluation(Callback):
    """Sleeps before each evaluation batch, so that a test can kill the process mid-evaluation."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        import time

        time.sleep(self.seconds)


class InterruptAt(Callback):
    """Ctrl-C at the start of training epoch `epoch` (Lightning stops the run as interrupted)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class SlowTraining(Callback):
    """Sleeps before each training batch, so that a test can act while a fit is running."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        import time

        time.sleep(self.seconds)
