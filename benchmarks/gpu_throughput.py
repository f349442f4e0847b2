"""Training throughput of the shipped configs in each precision: images per second over timed
training steps of the CNN classifier, the VAE and the UNet (segmentation), through the CLI's
Trainer with the config's own batch size, on real MNIST (scenes of its training digits for the
UNet). The figure callbacks are left out (they are measured in callback_cost.py) and so is
validation; the first `--warmup` steps (cuDNN autotuning, allocator growth) are not timed.
Also prints the training loss of the last step (same seed and batches in every precision), so a
precision that breaks training shows.

    python benchmarks/gpu_throughput.py [--models cnn vae unet] [--precisions 32-true 16-mixed bf16-mixed]
                                        [--steps 200] [--warmup 30] [--accelerator gpu|cpu]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from _shared_data import machine, real_mnist_root
from lightning.pytorch import Callback

from cnnlab.cli import CnnlabCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "cnn": ROOT / "configs" / "mnist_classifier.yaml",
    "vae": ROOT / "configs" / "mnist_vae.yaml",
    "unet": ROOT / "configs" / "mnist_unet_segmentation.yaml",
}


class StepTimer(Callback):
    """Seconds and images from the start of training batch `warmup` to the end of the last one."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.images = 0
        self.start = self.seconds = None
        self.loss = float("nan")

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is not None:
            self.images += len(batch[0])

    def on_train_epoch_end(self, trainer, pl_module):
        self._sync(pl_module)
        self.seconds = time.perf_counter() - self.start
        loss = trainer.callback_metrics.get("train/loss")  # logged per step: the last step's
        self.loss = float(loss) if loss is not None else float("nan")


def measure(model: str, precision: str, root: str, steps: int, warmup: int, accelerator: str) -> dict:
    batches = warmup + steps
    args = [
        f"--config={CONFIGS[model]}",
        f"--config={ROOT / 'configs' / 'logger' / 'csv.yaml'}",
        f"--data.data_dir={root}",
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={batches}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        f"--trainer.accelerator={accelerator}",
        "--trainer.devices=1",
        f"--trainer.precision={precision}",
        f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='cnnlab-throughput-')}",
        "--seed_everything=0",
    ]
    if model == "unet":  # only as many scenes as the timed steps use: drawing them is setup, not training
        args += ["--data.train_scenes=8192", "--data.val_scenes=32", "--data.test_scenes=32"]
    sys.argv = ["train.py"]
    cli = CnnlabCLI(args=args, run=False)
    timer = StepTimer(warmup)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    if timer.start is None:
        raise SystemExit(f"{model}: the epoch had fewer than {warmup} batches; lower --warmup")
    return {
        "model": model,
        "precision": precision,
        "batch_size": cli.datamodule.batch_size,
        "steps": timer.images // cli.datamodule.batch_size,
        "images_per_s": timer.images / timer.seconds,
        "ms_per_step": 1000 * timer.seconds / max(1, timer.images // cli.datamodule.batch_size),
        "last_loss": timer.loss,
        "max_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=["32-true", "16-mixed", "bf16-mixed"])
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    opts = parser.parse_args()
    root = real_mnist_root()
    results = []
    for model in opts.models:
        for precision in opts.precisions:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            results.append(measure(model, precision, root, opts.steps, opts.warmup, opts.accelerator))
            print(json.dumps(results[-1]), flush=True)
    print(f"\nmachine: {machine()}; accelerator {opts.accelerator}; {opts.steps} timed steps after {opts.warmup}")
    print("| model | batch | precision | images/s | ms/step | last step's training loss | peak GPU MiB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        memory = f"{r['max_memory_mib']:.0f}" if r["max_memory_mib"] is not None else "-"
        print(
            f"| {r['model']} | {r['batch_size']} | {r['precision']} | {r['images_per_s']:,.0f} "
            f"| {r['ms_per_step']:.2f} | {r['last_loss']:.4f} | {memory} |"
        )


if __name__ == "__main__":
    main()
