"""Wall time of a seed sweep of the MNIST classifier with --jobs 1 (one worker, all cores' threads)
against --jobs 2 (two workers, the cores shared out), at the budget of seeds_distributions.py on the
real MNIST split. Each setting runs in a fresh folder, so nothing is resumed. Figures are drawn as
`cnnlab-seeds run --figures` says (default: the first seed's only; `--figures all` for every seed).

    python benchmarks/seeds_wall_time.py [--seeds 0-99] [--jobs 1 2] [--figures first]
"""

import argparse
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnlab-seeds-wall-"))
    data = unpacked_mnist(work / "data")
    rows = []
    for jobs in args.jobs:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        command = [sys.executable, "-m", "cnnlab.seeds", "run", "--config=configs/mnist_classifier.yaml", *BUDGET]
        command += [f"--data.data_dir={data}", f"--seeds={args.seeds}", f"--jobs={jobs}", f"--name=jobs{jobs}"]
        command += [f"--figures={args.figures}"]
        subprocess.run([*command, f"--root={work / 'runs'}"], cwd=ROOT, check=True)
        wall = time.time() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        rows.append((jobs, wall, cpu))
    n = len(parse_seeds(args.seeds))
    print(f"machine: {machine()}; {n} seeds; budget: {' '.join(BUDGET)}")
    print("| --jobs | wall s | s per seed | CPU s |\n| ---: | ---: | ---: | ---: |")
    for jobs, wall, cpu in rows:
        print(f"| {jobs} | {wall:.0f} | {wall / n:.1f} | {cpu:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
