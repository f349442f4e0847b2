"""What a seed costs besides training: a launcher worker's one-time start-up (imports), and the
per-seed overhead once it is warm, against the same seed as two fresh `train.py` processes (fit,
then test of the best checkpoint). A near-empty seed on the real MNIST split (64 training digits,
one step; 64 validation and test digits) makes nearly all of its time overhead.

Each seed gets what the launcher sends it (`Sweep.args`, `Sweep.env`: W&B labels, figures on or off);
with the default `--figures first` only the warm-up seed draws figures, as in `cnnlab-seeds run`, and
the fresh processes get the environment of a later seed (no figures), so both sides do the same work.

    python benchmarks/seeds_overhead.py [--seeds 8] [--standalone 2] [--logger csv|wandb] [--figures first]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared_data import machine
from seeds_distributions import unpacked_mnist

from cnnlab.seeds.pool import Worker, threads_per_worker
from cnnlab.seeds.sweep import Sweep

ROOT = Path(__file__).resolve().parents[1]
NEAR_EMPTY = [
    "--trainer.max_epochs=1",
    "--data.max_train_samples=64",
    "--data.batch_size=64",
    "--data.val_size=64",
    "--data.max_eval_samples=64",
    "--data.download=false",
    "--trainer.enable_model_summary=false",
]


def wait_for(worker: Worker, event: str) -> dict:
    while not worker.messages:
        if not worker.read():
            sys.exit(f"worker died; see {worker.log}")
    message = worker.messages.pop(0)
    assert message["event"] == event, message
    return message


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=8, help="warm seeds measured (after one warm-up seed)")
    parser.add_argument("--standalone", type=int, default=2, help="seeds run as fresh train.py processes")
    parser.add_argument("--logger", choices=("csv", "wandb"), default="csv")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--figures",
        choices=("first", "all", "none"),
        default="first",
        help="which seeds' figure callbacks draw, as cnnlab-seeds run --figures (default: the warm-up seed only)",
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    work = Path(tempfile.mkdtemp(prefix="cnnlab-seeds-overhead-"))
    data = unpacked_mnist(work / "data")
    logger = ["--config=configs/logger/csv.yaml"] if args.logger == "csv" else []
    overrides = [*logger, *NEAR_EMPTY, f"--data.data_dir={data}"]
    sweep = Sweep(
        name="overhead",
        configs=["configs/mnist_classifier.yaml"],
        seeds=list(range(args.seeds + 1)),
        overrides=overrides,
        root=work / "runs",
        threads=args.threads,
        figures=args.figures,
    )
    threads = threads_per_worker(sweep.threads, sweep.jobs)  # what the launcher gives a worker

    worker = Worker(0, threads, None, work / "worker.log")
    ready = wait_for(worker, "ready")
    results = []
    for seed in range(args.seeds + 1):
        task = {
            "seed": seed,
            "attempt": 1,
            "args": sweep.args(seed),
            "env": sweep.env(seed),
            "log": str(work / f"{seed}.log"),
        }
        worker.send(task)
        result = wait_for(worker, "result")
        if result["status"] != "finished":
            sys.exit(f"seed {seed} failed: {result['error']}")
        results.append(result)
    worker.close_input()
    worker.proc.wait()
    warm = results[1:]
    total = [r["seconds"] for r in warm]
    outside = [r["seconds"] - r["fit_seconds"] - r["test_seconds"] for r in warm]

    standalone = []
    common = ["configs/mnist_classifier.yaml", *overrides, f"--trainer.default_root_dir={work / 'standalone'}"]
    for seed in range(100, 100 + args.standalone):
        # the environment the launcher gives a seed (seed 100+ is not the sweep's first: no figures
        # unless --figures all)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), **sweep.env(seed)}
        start = time.time()
        fit = [sys.executable, "train.py", "fit", "--config", *common, f"--seed_everything={seed}"]
        subprocess.run(fit, env=env, check=True, capture_output=True)
        (summary,) = (work / "standalone").glob(f"mnist_classifier/*-seed{seed}/summary.json")
        best = json.loads(summary.read_text())["best_checkpoint"]
        test = [sys.executable, "train.py", "test", "--config", *common, f"--seed_everything={seed}"]
        subprocess.run([*test, f"--ckpt_path={best}"], env=env, check=True, capture_output=True)
        standalone.append(time.time() - start)

    print(f"machine: {machine()}; logger: {args.logger}; torch threads per worker: {threads}")
    print("| what | median s | runs |\n| --- | ---: | --- |")
    rows = [
        ("worker start-up (spawn to ready: imports), once per worker", [ready["startup_seconds"]]),
        ("near-empty seed in a warm worker, fit + test, wall", total),
        ("  of which outside Lightning's fit/test (CLI parse, instantiate, summary, cleanup)", outside),
        ("the same seed as two fresh `train.py` processes (fit, test)", standalone),
    ]
    for name, values in rows:
        if not values:  # --standalone 0
            continue
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
