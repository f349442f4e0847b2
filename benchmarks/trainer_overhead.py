"""Training steps through cnnlab's Trainer against a hand-written PyTorch loop over the same in-memory
tensors: same network, optimizer, one-cycle schedule, batch size, steps, augmentation and device; no
figure callbacks (callback_cost.py measures them), the CSV logger. Runs alternate (loop, cnnlab, loop,
cnnlab, ...) so drift and other load hit both alike; the figure is milliseconds per step above the loop.

The overhead-bound setting (the default): the fully connected baseline at width 32, batch 32, no
augmentation: a step costs about a millisecond of arithmetic, so the Trainer's own per-step Python
shows. `--config configs/mnist_classifier.yaml --width 0 --batch-size 128 --augment` is the main job.

    python benchmarks/trainer_overhead.py [--steps 500] [--repeats 5] [--device cpu|cuda] [--threads 1]
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


class StepTimer(Callback):
    """Wall time from the first training step's start to the last one's end (set-up excluded)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self._sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync()
        self.seconds = time.perf_counter() - self.start
        self.steps = batch_idx  # steps after the first, whose start the clock began at


def build(opts, steps: int):
    sys.argv = ["train.py"]
    args = [
        f"--config={opts.config}",
        "--config=configs/logger/csv.yaml",
        f"--data.data_dir={opts.root}",
        f"--data.batch_size={opts.batch_size}",
        f"--data.augment={str(opts.augment).lower()}",
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.accelerator={'gpu' if opts.device == 'cuda' else 'cpu'}",
        "--trainer.devices=1",
        f"--trainer.precision={opts.precision}",
        f"--trainer.default_root_dir={tempfile.mkdtemp()}",
    ]
    if opts.width:
        args.append(f"--model.width={opts.width}")
    return CnnlabCLI(args=args, run=False)


def cnnlab_steps(opts) -> float:
    """Seconds per step through the Trainer."""
    cli = build(opts, opts.steps + 1)
    timer = StepTimer(opts.device)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.seconds / timer.steps


def plain_steps(opts) -> float:
    """Seconds per step of the same work written by hand: no Trainer, no callbacks, no logging."""
    cli = build(opts, opts.steps + 1)  # same model, optimizer factories and data
    model, dm, device = cli.model.to(opts.device), cli.datamodule, opts.device
    dm.prepare_data()
    dm.setup("fit")
    optimizer = model.optimizer(model.parameters())
    scheduler = model.lr_scheduler(optimizer, total_steps=opts.steps + 1)
    use_amp = opts.precision != "32-true"
    dtype = torch.bfloat16 if opts.precision.startswith("bf16") else torch.float16
    scaler = torch.amp.GradScaler(device, enabled=opts.precision == "16-mixed")
    model.train()
    for step, (images, labels) in enumerate(dm.train_dataloader()):
        if step == 1:  # the clock starts at the second step, as StepTimer's does
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        if step == opts.steps + 1:
            break
        # as on_after_batch_transfer does for a training batch (augmentation where the data says so)
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
    return (time.perf_counter() - start) / opts.steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/mnist_mlp.yaml")
    parser.add_argument("--width", type=int, default=32, help="model width; 0 keeps the config's")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    opts.root = real_mnist_root()
    times = {"plain": [], "cnnlab": []}
    warm = argparse.Namespace(**{**vars(opts), "steps": 20})
    plain_steps(warm), cnnlab_steps(warm)  # warm-up: kernels, allocator, caches
    for _ in range(opts.repeats):
        times["plain"].append(plain_steps(opts))
        times["cnnlab"].append(cnnlab_steps(opts))
    plain, ours = (1000 * statistics.median(times[k]) for k in ("plain", "cnnlab"))
    print(f"machine: {machine()}; device {opts.device}, precision {opts.precision}, threads {torch.get_num_threads()}")
    what = f"{opts.config}, width {opts.width or 'as configured'}, batch {opts.batch_size}"
    print(f"{opts.steps} steps of {what}, augmentation {'on' if opts.augment else 'off'}; {opts.repeats} runs each")
    print(f"plain PyTorch loop: {plain:.3f} ms/step (runs: {', '.join(f'{1000 * t:.3f}' for t in times['plain'])})")
    print(f"cnnlab Trainer:     {ours:.3f} ms/step (runs: {', '.join(f'{1000 * t:.3f}' for t in times['cnnlab'])})")
    print(f"Trainer overhead: {ours - plain:+.3f} ms/step ({100 * (ours / plain - 1):+.1f}%)")


if __name__ == "__main__":
    main()
