"""Many processes, one storage: N `fit` and N `test` processes released together on one run root.

One run is trained first (a `train.py fit` of its own); then 2N processes wait at one barrier and
are released at the same instant: N fits of the same config and seed (all of them want the same run directory name)
and N tests of that run's best checkpoint (all of them want the same evaluation directory name). On
the real MNIST (linked .gz files, so the processes also unpack them together) with tiny budgets. It
then checks every record: 2N distinct directories, each with a complete, valid summary.json, no
directory shared, every fit's checkpoints verifying against the SHA-256 in its record, the tested
run listing each of the N evaluations once, and no temporary or lock file left anywhere.

The processes are forked from one that has imported cnnlab (and run nothing): each imported
process holds about 450 MiB of its own (torch's CUDA build), and 40 of them do not fit beside their
training in 24 GiB; forked, they share those pages until written. Each is still a process of its
own, with its own files, writing one storage with the others.

    python benchmarks/stress_records.py [--processes 20] [--logger csv|wandb]
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _shared_data import machine, real_mnist_root

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=4",
    "--data.batch_size=32",
    "--data.val_size=200",
    "--data.max_train_samples=512",
    "--data.max_eval_samples=200",
    "--trainer.callbacks=[]",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--seed_everything=5",
]


def released(barrier, subcommand: str, args: list[str], log: str) -> None:
    import torch

    from cnnlab.cli import main

    torch.set_num_threads(1)
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        barrier.wait()
        main([subcommand, *args])


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=20, help="fits and tests each")
    parser.add_argument("--logger", choices=("csv", "wandb"), default="csv")
    options = parser.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("WANDB_MODE", "offline")
    work = Path(tempfile.mkdtemp(prefix="cnnlab-stress-"))
    runs = work / "runs"
    logger = ["--config", f"configs/logger/{options.logger}.yaml"] if options.logger == "csv" else []
    args = ["--config", "configs/mnist_classifier.yaml", *logger, f"--data.data_dir={real_mnist_root()}"]
    args += [*TINY, f"--trainer.default_root_dir={runs}"]

    import cnnlab.cli  # noqa: F401  (imported once, shared by the forked processes)

    subprocess.run([sys.executable, "train.py", "fit", *args], check=True, capture_output=True)
    (tested,) = list((runs / "mnist_classifier").iterdir())
    best = json.loads((tested / "summary.json").read_text())["best_checkpoint"]

    n = options.processes
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2 * n)
    commands = [("fit", args)] * n + [("test", [*args, f"--ckpt_path={best}"])] * n
    processes = [
        context.Process(target=released, args=(barrier, sub, a, str(work / f"process{k}.log")))
        for k, (sub, a) in enumerate(commands)
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=1800)
    seconds = time.perf_counter() - started
    codes = Counter(process.exitcode for process in processes)

    fits = sorted(p for p in (runs / "mnist_classifier").iterdir() if p != tested)
    tests = sorted((tested / "evaluations").iterdir())
    problems = []
    for directory in fits + tests:
        try:
            summary = json.loads((directory / "summary.json").read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{directory}: no valid summary.json ({err})")
            continue
        if summary.get("status") != "finished":
            problems.append(f"{directory}: status {summary.get('status')} ({summary.get('error')})")
        if summary.get("run_dir" if directory in fits else "dir") != str(directory):
            problems.append(f"{directory}: its record names another directory")
        for name, entry in (summary.get("checkpoints") or {}).items():
            if sha256(entry["path"]) != entry["sha256"] or Path(entry["path"]).parents[1] != directory:
                problems.append(f"{directory}: {name} checkpoint does not verify or is another run's")
        if directory in fits and set(summary.get("checkpoints") or {}) != {"best", "last"}:
            problems.append(f"{directory}: the record lacks the checksums of best and last")
    listed = Counter(e["dir"] for e in json.loads((tested / "summary.json").read_text()).get("evaluations", []))
    if sorted(listed) != sorted(str(t) for t in tests) or set(listed.values()) != {1}:
        problems.append(f"the tested run lists {sum(listed.values())} evaluations for {len(tests)} directories")
    stray = [str(p) for p in runs.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    problems += [f"stray file {p}" for p in stray]
    shared = (2 * n) - len(fits) - len(tests)

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"machine: {machine()}")
    print(f"{n} fit + {n} test processes released together, logger {options.logger}: {seconds:.0f} s")
    print(f"exit codes: {dict(codes)}")
    print(f"run directories: {len(fits)} new fits, evaluation directories: {len(tests)}")
    print(f"directories shared by two processes: {shared}")
    print(f"largest process: {peak:.0f} MiB")
    print(f"problems: {len(problems)}")
    for problem in problems[:20]:
        print(f"  {problem}")
    print(f"records and logs under {work}")
    sys.exit(1 if problems or shared or codes != Counter({0: 2 * n}) else 0)


if __name__ == "__main__":
    main()
