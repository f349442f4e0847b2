"""Seconds from `python train.py fit ...` to the first training step (imports, config, data setup,
logger), against a bare `python -c "import lightning, torchvision"` on the same machine. A seed
study pays this once per run.

    python benchmarks/startup_time.py [--repeats 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared_data import machine, real_mnist_root

ROOT = Path(__file__).resolve().parents[1]


def seconds(command: list[str], env: dict | None = None, probe: Path | None = None) -> float:
    start = time.time()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe is None:
        return time.time() - start
    return float(probe.read_text()) - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = real_mnist_root()
    bare = [seconds([sys.executable, "-c", "import lightning, torchvision"]) for _ in range(args.repeats)]
    rows = [("python -c 'import lightning, torchvision'", bare)]
    for label, logger in (("CSV logger", ["--config=configs/logger/csv.yaml"]), ("W&B logger, offline", [])):
        runs = []
        for _ in range(args.repeats):
            probe = Path(tempfile.mkdtemp()) / "first_step"
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT / "benchmarks"),
                "CNNLAB_PROBE_FILE": str(probe),
                "WANDB_MODE": "offline",
            }
            command = [
                sys.executable,
                "train.py",
                "fit",
                "--config=configs/mnist_classifier.yaml",
                *logger,
                f"--data.data_dir={root}",
                f"--trainer.default_root_dir={tempfile.mkdtemp()}",
                "--trainer.callbacks+=startup_probe.FirstStepProbe",
            ]
            runs.append(seconds(command, env, probe))
        rows.append((f"python train.py fit --config configs/mnist_classifier.yaml ({label}) to first step", runs))
    print(f"machine: {machine()}")
    print("| command | median s | runs |\n| --- | ---: | --- |")
    for name, runs in rows:
        print(f"| {name} | {statistics.median(runs):.2f} | {', '.join(f'{r:.2f}' for r in runs)} |")
    base = statistics.median(bare)
    for name, runs in rows[1:]:
        print(f"{name}: +{statistics.median(runs) - base:.2f} s over the bare import")


if __name__ == "__main__":
    main()
