"""One training epoch of the MNIST classifier through cnnlab's Trainer against a hand-written PyTorch
loop over the same in-memory tensors: same network, optimizer, one-cycle schedule, batch size, steps,
augmentation and device; the config's figure callbacks left out (callback_cost.py measures them). Runs
alternate (loop, cnnlab, loop, cnnlab, ...) so drift hits both alike.

    python benchmarks/trainer_overhead.py [--steps 200] [--repeats 3] [--device cpu|cuda]
"""

import argparse
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from _shared_data import machine, real_mnist_root
from lightning.pytorch import Callback

from cnnlab.cli import CnnlabCLI


class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def build(root: str, steps: int, device: str, precision: str):
    sys.argv = ["train.py"]
    return CnnlabCLI(
        args=[
            "--config=configs/mnist_classifier.yaml",
            "--config=configs/logger/csv.yaml",
            f"--data.data_dir={root}",
            "--trainer.max_epochs=1",
            f"--trainer.limit_train_batches={steps}",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.callbacks=[]",  # the config's figure callbacks: measured in callback_cost.py
            f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            "--trainer.devices=1",
            f"--trainer.precision={precision}",
            f"--trainer.default_root_dir={tempfile.mkdtemp()}",
        ],
        run=False,
    )


def cnnlab_epoch(root: str, steps: int, device: str, precision: str) -> float:
    cli = build(root, steps, device, precision)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.seconds


def plain_epoch(root: str, steps: int, device: str, precision: str) -> float:
    """The same work written by hand: no Trainer, no callbacks, no logging."""
    cli = build(root, steps, device, precision)  # same model, optimizer factories and data
    model, dm = cli.model.to(device), cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    optimizer = model.optimizer(model.parameters())
    scheduler = model.lr_scheduler(optimizer, total_steps=steps)
    use_amp = precision != "32-true"
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")
    model.train()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step, (images, labels) in enumerate(dm.train_dataloader()):
        if step == steps:
            break
        images = dm.transform(images.to(device, non_blocking=True), train=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device, dtype=dtype, enabled=use_amp):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    root = real_mnist_root()
    times = {"plain": [], "cnnlab": []}
    plain_epoch(root, 10, args.device, args.precision)  # warm-up: kernels, allocator, caches
    for _ in range(args.repeats):
        times["plain"].append(plain_epoch(root, args.steps, args.device, args.precision))
        times["cnnlab"].append(cnnlab_epoch(root, args.steps, args.device, args.precision))
    plain, ours = statistics.median(times["plain"]), statistics.median(times["cnnlab"])
    print(f"machine: {machine()}; device {args.device}, precision {args.precision}")
    print(f"{args.steps} steps of batch 128, SmallCNN, AdamW + OneCycleLR, augmentation on; {args.repeats} runs each")
    print(f"plain PyTorch loop: {plain:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times['plain'])})")
    print(f"cnnlab Trainer:     {ours:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times['cnnlab'])})")
    print(f"cnnlab overhead: {100 * (ours / plain - 1):+.1f}%")


if __name__ == "__main__":
    main()
