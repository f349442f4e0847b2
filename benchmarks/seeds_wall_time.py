"""Wall time of a seed sweep of the MNIST classifier with --jobs 1 (one worker, all cores' threads)
against --jobs 2 (two workers, the cores shared out), at the budget of seeds_distributions.py on the
real MNIST split. Each setting runs in a fresh folder, so nothing is resumed. Figures are drawn as
`cnnlab-seeds run --figures` says (default: the first seed's only; `--figures all` for every seed).

    python benchmarks/seeds_wall_time.py [--seeds 0-99] [--jobs 1 2] [--figures first] [--logger csv wandb]
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared_data import machine
from seeds_distributions import BUDGET, ROOT, unpacked_mnist

from cnnlab.seeds.sweep import parse_seeds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0-99")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--figures", choices=("first", "all", "none"), default="first", help="as cnnlab-seeds run")
    parser.add_argument(
        "--logger",
        nargs="+",
        choices=("csv", "wandb"),
        default=["csv"],
        help="csv (the budget's logger) and/or wandb (the configs' default logger, offline here): one sweep each",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnlab-seeds-wall-"))
    data = unpacked_mnist(work / "data")
    rows = []
    for logger in args.logger:
        budget = BUDGET if logger == "csv" else [a for a in BUDGET if a != "--config=configs/logger/csv.yaml"]
        # W&B offline, as for a user without credentials (a logged-in user's runs would go online)
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"} if logger == "wandb" else None
        for jobs in args.jobs:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.time()
            command = [sys.executable, "-m", "cnnlab.seeds", "run", "--config=configs/mnist_classifier.yaml", *budget]
            command += [f"--data.data_dir={data}", f"--seeds={args.seeds}", f"--jobs={jobs}"]
            command += [f"--name={logger}-jobs{jobs}", f"--figures={args.figures}"]
            subprocess.run([*command, f"--root={work / 'runs'}"], cwd=ROOT, check=True, env=env)
            wall = time.time() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            rows.append((logger, jobs, wall, cpu))
    n = len(parse_seeds(args.seeds))
    print(f"machine: {machine()}; {n} seeds; figures: {args.figures}; budget: {' '.join(BUDGET)}")
    print("| logger | --jobs | wall s | s per seed | CPU s |\n| --- | ---: | ---: | ---: | ---: |")
    for logger, jobs, wall, cpu in rows:
        print(f"| {logger} | {jobs} | {wall:.0f} | {wall / n:.1f} | {cpu:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
