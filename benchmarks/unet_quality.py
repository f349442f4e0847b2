"""UNet quality on real MNIST, through train.py's CLI and the shipped configs.

segmentation: scenes of the shared training digits (validation scenes from held-out training
digits) to train, scenes of the official 10,000 test digits to test; prints foreground mean IoU,
Dice and the per-class figures of the best checkpoint. denoise: MNIST digits with noise, trained on
the training digits and tested on the official test digits; prints PSNR and SSIM of the output and
the noisy input's PSNR (the gain is the difference). Both print CPU and wall seconds per epoch.

    python benchmarks/unet_quality.py segmentation [--epochs 8] [--train-scenes 8000] [--base-channels 8]
    python benchmarks/unet_quality.py denoise [--epochs 3] [--noise gaussian] [--noise-level 0.5]
    (any of them: [--accelerator gpu] [--precision bf16-mixed] [-- more train.py options])
"""

import argparse
import csv
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from _shared_data import machine, real_mnist_root

from cnnlab.cli import main
from cnnlab.records import read_summary
from networks.unet import UNet

ROOT = Path(__file__).resolve().parents[1]


def run(subcommand: str, args: list[str]) -> None:
    sys.argv = ["train.py"]
    main([subcommand, *args])


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["segmentation", "denoise"])
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--train-scenes", type=int, default=None, help="segmentation; default: the config's")
    parser.add_argument("--max-train-samples", type=int, default=None, help="denoise: cap the training digits")
    parser.add_argument("--base-channels", type=int, default=None, help="default: the config's")
    parser.add_argument("--noise", default=None, help="denoise: gaussian or salt_and_pepper; default: the config's")
    parser.add_argument("--noise-level", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on a GPU")
    parser.add_argument("--seed", type=int, default=1234)
    opts, extra = parser.parse_known_args()  # the rest go to train.py, e.g. --model.dice_weight=1
    extra = [arg for arg in extra if arg != "--"]
    command = " ".join(sys.argv)
    torch.set_num_threads(opts.threads)

    config = f"mnist_unet_{opts.task}"
    out = Path(tempfile.mkdtemp(prefix="cnnlab-unet-bench-"))
    args = [
        f"--config={ROOT / 'configs' / f'{config}.yaml'}",
        f"--config={ROOT / 'configs' / 'logger' / 'csv.yaml'}",
        f"--data.data_dir={real_mnist_root()}",
        "--data.download=false",
        f"--trainer.accelerator={opts.accelerator}",
        f"--trainer.precision={opts.precision}",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
        f"--seed_everything={opts.seed}",
    ]
    for flag, value in (
        ("--trainer.max_epochs", opts.epochs),
        ("--data.train_scenes", opts.train_scenes),
        ("--data.max_train_samples", opts.max_train_samples),
        ("--model.base_channels", opts.base_channels),
        ("--data.noise", opts.noise),
        ("--data.noise_level", opts.noise_level),
    ):
        if value is not None:
            args.append(f"{flag}={value}")
    args += extra

    cpu, wall = time.process_time(), time.time()
    run("fit", args)
    fit_cpu, fit_wall = time.process_time() - cpu, time.time() - wall
    run("test", [*args, "--ckpt_path=best"])
    (summary_file,) = (out / config).glob("*/summary.json")  # the one training run (fit metrics)
    summary = json.loads(summary_file.read_text())
    # the test of the best checkpoint has its own record, <run>/evaluations/<time>-test/summary.json
    tests = [e for e in summary.get("evaluations") or [] if e.get("subcommand") == "test"]
    if not tests or tests[-1].get("status") != "finished":
        sys.exit(f"the test left no finished evaluation record in {summary_file}")
    metrics = read_summary(tests[-1]["dir"])["metrics"]
    epochs = summary["epochs"]

    print(f"\n# UNet {opts.task} on real MNIST — {datetime.now():%Y-%m-%d %H:%M}, {machine()}")
    print(f"command: python {command}")
    init = summary["config"]["model"]["init_args"]
    data = summary["config"]["data"]["init_args"]
    channels = init["image_shape"][0]
    net = UNet(
        channels,
        init["num_classes"] if opts.task == "segmentation" else channels,
        init["depth"],
        init["base_channels"],
        init["upsample"],
    )
    params = sum(p.numel() for p in net.parameters())
    print(
        f"model: depth {init['depth']}, base_channels {init['base_channels']}, {init['upsample']} "
        f"({params:,} parameters); {epochs} epochs; best checkpoint by {summary['monitor']}"
    )
    print(
        f"fit on {opts.accelerator} ({opts.precision}): {fit_cpu / epochs:.1f} CPU s and "
        f"{fit_wall / epochs:.1f} wall s per epoch (setup included)"
    )
    if opts.task == "segmentation":
        print(
            f"scenes: {data['train_scenes']} train / {data['val_scenes']} val / {data['test_scenes']} test, "
            f"{data['canvas_size']}x{data['canvas_size']}, {data['min_digits']}-{data['max_digits']} digits, "
            f"scale {data['min_scale']}-{data['max_scale']}"
        )
        print(f"test foreground mean IoU {metrics['test/miou']:.4f}, mean Dice {metrics['test/dice']:.4f}")
        print("per class  IoU     Dice")
        for digit in range(10):  # nan: the digit is in no test scene (only with very few scenes)
            iou, dice = (metrics.get(f"test/{name}_{digit}", float("nan")) for name in ("iou", "dice"))
            print(f"digit {digit}    {iou:.4f}  {dice:.4f}")
    else:
        print(
            f"noise: {data['noise']} {data['noise_level']}; training digits: {data.get('max_train_samples') or 'all'}"
        )
        gain = metrics["test/psnr"] - metrics["test/psnr_noisy"]
        print(
            f"test PSNR {metrics['test/psnr']:.2f} dB (noisy input {metrics['test/psnr_noisy']:.2f} dB, "
            f"gain {gain:+.2f} dB), SSIM {metrics['test/ssim']:.4f}"
        )
    monitor = summary["monitor"]
    # the training split's figure beside it: a growing gap is the net learning its training scenes
    for metrics_csv in Path(summary["run_dir"]).glob("metrics.csv"):
        with open(metrics_csv) as handle:
            rows = list(csv.DictReader(handle))
        for name in (monitor, monitor.replace("val/", "train/")):
            values = [row[name] for row in rows if row.get(name)]
            print(f"{name} by epoch: {', '.join(f'{float(v):.3f}' for v in values)}")
    print(f"run directory: {summary['run_dir']}")


if __name__ == "__main__":
    main_benchmark()
