"""The workshop's "final loss / accuracy over N runs" figures for real: the MLP and the CNN over the
same model seeds on the shared real MNIST split, compared; and the CNN with augmentation on vs off
over the same seeds. Each sweep runs through `cnnlab-seeds run` (resumable: rerun to continue), then
`report` and `compare`; figures are copied to docs/.

    python benchmarks/seeds_distributions.py [--seeds 0-99] [--jobs 2] [--root runs/benchmarks]

Budget (small on purpose, so 300 seeds fit on a 2-core CPU; the CPU seconds each sweep took are
printed at the end): one epoch on 3,000 of the shared training digits (batch 32), 1,000
validation digits, tested on the full official 10,000 test digits; CSV logger.
"""

import argparse
import gzip
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _shared_data import SHARED_MNIST, machine

ROOT = Path(__file__).resolve().parents[1]
BUDGET = [
    "--config=configs/logger/csv.yaml",
    "--trainer.max_epochs=1",
    "--data.max_train_samples=3000",
    "--data.batch_size=32",
    "--data.val_size=1000",
    "--data.eval_batch_size=500",
    "--data.download=false",
    "--trainer.enable_model_summary=false",
]
SWEEPS = {
    "mnist-mlp": ["--config=configs/mnist_mlp.yaml"],
    "mnist-cnn": ["--config=configs/mnist_classifier.yaml"],
    "mnist-cnn-noaug": ["--config=configs/mnist_classifier.yaml", "--data.augment=false"],
}
COMPARISONS = (("mnist-mlp", "mnist-cnn"), ("mnist-cnn-noaug", "mnist-cnn"))


def unpacked_mnist(root: Path) -> Path:
    """A stable data root (so a rerun resumes the same sweeps) with the real MNIST unpacked once:
    workers starting together must not race to unpack the same .gz."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if not SHARED_MNIST.is_dir():
        sys.exit(f"skipped: real MNIST not found at {SHARED_MNIST}")
    for gz in SHARED_MNIST.glob("*.gz"):
        target = raw / gz.name.removesuffix(".gz")
        if not target.is_file():
            with gzip.open(gz, "rb") as src, open(target.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            target.with_suffix(".part").rename(target)
    return root


def seeds_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cnnlab.seeds", *args], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0-99")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", default="runs/benchmarks")
    parser.add_argument("--docs", default="docs", help="where the figures go")
    args = parser.parse_args()
    root = (ROOT / args.root).resolve()
    data = unpacked_mnist(root / "data")
    timings = {}
    for name, config in SWEEPS.items():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        seeds_cli(
            "run",
            *config,
            *BUDGET,
            f"--data.data_dir={data}",
            f"--seeds={args.seeds}",
            f"--jobs={args.jobs}",
            f"--name={name}",
            f"--root={root}",
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        timings[name] = (time.time() - start, cpu)
    docs = ROOT / args.docs
    docs.mkdir(exist_ok=True)
    for name in SWEEPS:
        seeds_cli("report", name, f"--root={root}", "--wandb=off")
        shutil.copy(root / name / "report" / "distributions.png", docs / f"seeds_{name.replace('-', '_')}.png")
    for a, b in COMPARISONS:
        seeds_cli("compare", a, b, f"--root={root}", "--metric=test/acc")
        out = root / "comparisons" / f"{a}--{b}"
        shutil.copy(out / "overlay.png", docs / f"seeds_{a.replace('-', '_')}_vs_{b.replace('-', '_')}.png")
    seeds_cli(
        "compare",
        "mnist-cnn-noaug",
        "mnist-cnn",
        f"--root={root}",
        "--metric=test/acc",
        "--paired",
        f"--out={root / 'comparisons' / 'mnist-cnn-noaug--mnist-cnn-paired'}",
    )
    print(f"\nmachine: {machine()}")
    print("| sweep | wall s (this invocation) | CPU s (launcher + workers) |\n| --- | ---: | ---: |")
    for name, (wall, cpu) in timings.items():
        print(f"| {name} | {wall:.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
