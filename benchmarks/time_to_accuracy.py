"""The main job's time to accuracy, side by side with a plain-PyTorch reference, in one run.

Main job: `train.py fit --config configs/mnist_classifier.yaml --config configs/logger/csv.yaml` through
cnnlab's CLI as a user runs it (the config's figure callbacks, checkpoints, records and progress bar
included), once per `--seeds` value (`--seed_everything`), then `train.py test --ckpt_path=best` of
each run; the final test accuracy is the one in that test's evaluation record. A callback of this
script measures, at the end of every epoch's validation, the wall-clock and process CPU seconds since
fit start and the accuracy of that epoch's weights on the official 10,000 test digits; its own time
(the test pass) is subtracted from every later reading, so the times are those of the run alone.

Reference: the same data in the same process (the DataModule's uint8 tensors, normalised by its
`model_input`), no Lightning: networks.classifiers.SmallCNN, no augmentation, Adam with a one-cycle
learning rate, batch 128, the main job's device, precision and torch threads, for
`--reference-epochs`; the same per-epoch times and test accuracy (its final accuracy is its last
epoch's: it keeps no best checkpoint). `--reference-formats contiguous channels_last` runs it once
per memory format (ImageClassifier itself runs in channels-last).

Prints a markdown table: wall and CPU seconds to first reach 99.0 / 99.3 / 99.4 / 99.5% test accuracy
(blank if never), wall seconds to the end of fit, and the final test accuracy, for each seed, their
mean, each seed of `--previous-config` (another recipe run the same way, its seeds interleaved with
the main job's; `--epochs` and `--max-train-samples` apply to it too) and the reference; then the
machine, torch threads, the date and this command line. On a GPU the first seed also pays CUDA's
first-use costs (kernel loading, cuDNN heuristics).

    python benchmarks/time_to_accuracy.py [--seeds 0 1 2] [--epochs N] [--reference-epochs 3]
        [--reference-formats contiguous channels_last] [--threads T] [--max-train-samples N]
        [--out DIR] [--previous-config CONFIG [--previous-seeds 0]] [-- more train.py options]

e.g. on a GPU: `... --seeds 0 -- --config=configs/trainer/gpu_amp.yaml --trainer.precision=32-true`.
A quick check: `--seeds 0 --epochs 1 --reference-epochs 1 --max-train-samples 2000 --
--data.max_eval_samples=1000` (the test accuracy then covers 1,000 test digits only).
"""

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from _shared_data import machine, real_mnist_root
from lightning.pytorch import Callback
from typing_extensions import override

from cnnlab.cli import CnnlabCLI
from cnnlab.records import read_summary
from networks.classifiers import SmallCNN

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.990, 0.993, 0.994, 0.995)
AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class Clock:
    """Wall and process CPU seconds since `start`, less the time spent in `aside` (the test passes).
    On CUDA every reading waits for the queued work first, so it counts the work, not its queueing."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._sync()
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.aside_wall = self.aside_cpu = 0.0

    def now(self) -> tuple[float, float]:
        self._sync()
        return (
            time.perf_counter() - self.wall0 - self.aside_wall,
            time.process_time() - self.cpu0 - self.aside_cpu,
        )

    def aside(self, work):
        """work(), its time kept out of every later reading."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return work()
        finally:
            self._sync()
            self.aside_wall += time.perf_counter() - wall
            self.aside_cpu += time.process_time() - cpu


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, data, context=contextlib.nullcontext, batch_size: int = 1000) -> float:
    """Accuracy of `model` (eval mode, under `context`: the run's precision) on the DataModule's test split,
    read through `samples("test")` and `model_input` as every cnnlab callback reads data."""
    data.setup("test")
    images, labels = data.samples("test")
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    hits = torch.zeros((), dtype=torch.long, device=device)
    try:
        with context():
            for start in range(0, len(labels), batch_size):
                x = data.model_input(images[start : start + batch_size].to(device, non_blocking=True))
                y = labels[start : start + batch_size].to(device, non_blocking=True)
                hits += (model(x).argmax(1) == y).sum()
    finally:
        model.train(training)
    return hits.item() / len(labels)


class TestAccuracyPerEpoch(Callback):
    """At each validation's end during fit (not the sanity check): seconds since fit start and the test
    accuracy of the weights as they are then, the test pass itself kept out of the clock."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.clock: Clock | None = None

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        self.clock = Clock(pl_module.device)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        wall, cpu = self.clock.now()
        context = trainer.precision_plugin.forward_context
        acc = self.clock.aside(lambda: test_accuracy(pl_module, trainer.datamodule, context))
        self.epochs.append({"epoch": trainer.current_epoch + 1, "wall_s": wall, "cpu_s": cpu, "test_acc": acc})


class TimedCLI(CnnlabCLI):
    """cnnlab's CLI with one callback more: the probe above."""

    def __init__(self, probe: Callback, **kwargs) -> None:
        self.probe = probe
        super().__init__(**kwargs)

    @override
    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(self.probe)
        return trainer


def main_job(
    seed: int, root: str, opts, extra: list[str], config: Path | None = None, label: str = "main job"
) -> tuple[dict, CnnlabCLI]:
    """One seed of the main job (or of `config`): fit as a user runs it, then test its best checkpoint."""
    common = [
        f"--config={config or ROOT / 'configs' / 'mnist_classifier.yaml'}",
        f"--config={ROOT / 'configs' / 'logger' / 'csv.yaml'}",
        f"--data.data_dir={root}",
        f"--trainer.default_root_dir={tempfile.mkdtemp(prefix=f'cnnlab-tta-seed{seed}-')}",
    ]
    fit_only = [f"--seed_everything={seed}"]
    if opts.epochs is not None:  # the one-cycle schedule plans over max_epochs, so it follows
        fit_only.append(f"--trainer.max_epochs={opts.epochs}")
    if opts.max_train_samples is not None:
        fit_only.append(f"--data.max_train_samples={opts.max_train_samples}")
    probe = TestAccuracyPerEpoch()
    sys.argv = ["train.py"]
    fit = TimedCLI(probe, args=["fit", *common, *fit_only, *extra])
    end_wall, end_cpu = probe.clock.now()
    test = CnnlabCLI(args=["test", *common, *extra, "--ckpt_path=best"])
    result = {
        "run": f"{label}, seed {seed}",
        "seed": seed,
        "device": str(fit.trainer.strategy.root_device),
        "precision": str(fit.trainer.precision),
        "epochs": probe.epochs,
        "end_wall_s": end_wall,
        "end_cpu_s": end_cpu,
        "final_test_acc": read_summary(test.output_dir)["metrics"]["test/acc"],
        "run_dir": str(fit.run_dir),
    }
    return result, fit


class ChannelsLast(torch.nn.Module):
    """A network with its weights and input in channels-last memory format (as ImageClassifier runs)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


def reference(
    data, device: torch.device, precision: str, epochs: int, seed: int, memory_format: str, batch_size: int = 128
) -> dict:
    """The plain-PyTorch loop: SmallCNN, Adam + one-cycle (the config's peak rate), no augmentation,
    no validation, no checkpoints, on the DataModule's tensors."""
    torch.manual_seed(seed)
    images, labels = data.samples("train")
    model = SmallCNN(data.image_shape, data.num_classes)
    model = (ChannelsLast(model) if memory_format == "channels_last" else model).to(device)
    max_lr = 3e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=max_lr)
    steps = len(labels) // batch_size  # full batches only, as the DataModule's loader drops the last
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=epochs * steps)
    dtype = AUTOCAST.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.startswith("16"))

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    generator = torch.Generator().manual_seed(seed)
    clock = Clock(device)
    x_all, y_all = images.to(device), labels.to(device)
    rows = []
    for epoch in range(epochs):
        order = torch.randperm(len(y_all), generator=generator).to(device)
        model.train()
        for k in range(steps):
            index = order[k * batch_size : (k + 1) * batch_size]
            x, y = data.model_input(x_all[index]), y_all[index]
            with autocast():
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        wall, cpu = clock.now()
        acc = clock.aside(lambda: test_accuracy(model, data, autocast))
        rows.append({"epoch": epoch + 1, "wall_s": wall, "cpu_s": cpu, "test_acc": acc})
    end_wall, end_cpu = clock.now()
    return {
        "run": f"reference (plain PyTorch, {epochs} epochs{', channels-last' * (memory_format == 'channels_last')})",
        "seed": seed,
        "memory_format": memory_format,
        "device": str(device),
        "precision": precision,
        "epochs": rows,
        "end_wall_s": end_wall,
        "end_cpu_s": end_cpu,
        "final_test_acc": rows[-1]["test_acc"],
    }


def first_reached(run: dict, target: float) -> dict | None:
    return next((row for row in run["epochs"] if row["test_acc"] >= target - 1e-12), None)


def table(main: list[dict], refs: list[dict], previous: list[dict] = ()) -> str:
    head = ["run"]
    for target in TARGETS:
        head += [f"wall s to {100 * target:.1f}%", f"CPU s to {100 * target:.1f}%"]
    head += ["wall s to end", "final test acc"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]

    def row(run: dict) -> list[str]:
        cells = [run["run"]]
        for target in TARGETS:
            hit = first_reached(run, target)
            cells += [f"{hit['wall_s']:.1f}", f"{hit['cpu_s']:.1f}"] if hit else ["", ""]
        return [*cells, f"{run['end_wall_s']:.1f}", f"{100 * run['final_test_acc']:.2f}%"]

    rows = [row(run) for run in main]
    if len(main) > 1:
        mean = [f"main job, mean over {len(main)} seeds"]
        for target in TARGETS:
            hits = [hit for hit in (first_reached(run, target) for run in main) if hit]
            note = "" if len(hits) == len(main) else f" ({len(hits)}/{len(main)})"
            mean += [f"{statistics.mean(h[k] for h in hits):.1f}{note}" if hits else "" for k in ("wall_s", "cpu_s")]
        finals = ", ".join(f"{100 * run['final_test_acc']:.2f}" for run in main)
        mean_final = statistics.mean(run["final_test_acc"] for run in main)
        mean += [f"{statistics.mean(run['end_wall_s'] for run in main):.1f}", f"{100 * mean_final:.2f}% ({finals})"]
        rows.append(mean)
    rows += [row(run) for run in previous]
    rows += [row(ref) for ref in refs]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds of the main job")
    parser.add_argument("--epochs", type=int, default=None, help="main job's trainer.max_epochs (default: config's)")
    parser.add_argument("--reference-epochs", type=int, default=3)
    parser.add_argument(
        "--reference-formats",
        nargs="+",
        choices=["contiguous", "channels_last"],
        default=["contiguous"],
        help="the reference's memory format(s): one reference run each",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-train-samples", type=int, default=None, help="cap the training digits (quick checks)")
    parser.add_argument("--out", default=None, help="also write the table and the per-epoch figures here")
    parser.add_argument(
        "--previous-config",
        default=None,
        help="another config to run the same way beside the main job (the recipe it replaced, say), "
        "its seeds interleaved with the main job's",
    )
    parser.add_argument("--previous-seeds", type=int, nargs="+", default=None, help="its seeds (default: the first)")
    opts = parser.parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    if opts.threads:
        torch.set_num_threads(opts.threads)
    root = real_mnist_root()
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    main_runs, previous, fit = [], [], None
    previous_seeds = (opts.previous_seeds or opts.seeds[:1]) if opts.previous_config else []
    for seed in sorted(set(opts.seeds) | set(previous_seeds)):
        if seed in previous_seeds:  # interleaved, so both see the same machine over the same hours
            result, _ = main_job(seed, root, opts, extra, Path(opts.previous_config), "previous recipe")
            previous.append(result)
            print(json.dumps(result), flush=True)
        if seed in opts.seeds:
            result, fit = main_job(seed, root, opts, extra)
            main_runs.append(result)
            print(json.dumps(result), flush=True)
    # the last fit's DataModule: its training split (after any cap) and test split, as the main job saw them
    data = fit.datamodule
    device, precision = fit.trainer.strategy.root_device, str(fit.trainer.precision)
    refs = []
    for memory_format in opts.reference_formats:
        refs.append(reference(data, device, precision, opts.reference_epochs, opts.seeds[0], memory_format))
        print(json.dumps(refs[-1]), flush=True)
    report = "\n".join(
        [
            table(main_runs, refs, previous),
            "",
            f"machine: {machine()}; torch threads {torch.get_num_threads()}; device {device}, precision {precision}",
            f"training digits {len(data.samples('train')[1])}, test digits {len(data.samples('test')[1])}; "
            f"main job epochs {len(main_runs[-1]['epochs'])}, reference epochs {opts.reference_epochs}",
            f"date: {started}",
            f"command: {command}",
        ]
    )
    print("\n" + report, flush=True)
    if opts.out:
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "time_to_accuracy.md").write_text(report + "\n")
        runs = {"main": main_runs, "previous": previous, "reference": refs}
        (out / "time_to_accuracy.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
