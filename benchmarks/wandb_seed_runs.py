"""What a sweep leaves for W&B, read back from wandb's offline run files: N seeds of the MNIST CNN on
real digits, W&B offline (no credentials), then every `run-<id>.wandb` is read (tests/wandb_records.py)
and checked: one W&B run per seed, all in the sweep's group, each holding `val/*` and `test/*` (its
fit's folder and its test's folder share the run's id, so W&B merges them on sync), the seed in its
config; and the sweep's printed `wandb sync` line, given to `wandb sync --dry-run`, names every file.

    python benchmarks/wandb_seed_runs.py [--seeds 0-99] [--jobs 2] [--root /tmp/cnnlab-wandb-sweep]

Budget per seed (small on purpose: this measures what reaches W&B, not accuracy): 300 training
digits, one epoch, batch 50, validation on 200, test on 500.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _shared_data import machine, real_mnist_root

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from wandb_records import offline_runs  # noqa: E402  (the tests' reader of wandb's offline files)

BUDGET = [
    "--trainer.max_epochs=1",
    "--data.max_train_samples=300",
    "--data.batch_size=50",
    "--data.val_size=200",
    "--data.max_eval_samples=500",
    "--data.download=false",
    "--trainer.enable_model_summary=false",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-99")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", default=None, help="where the sweep goes (default: a new temporary folder)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="cnnlab-wandb-sweep-"))
    data = real_mnist_root()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"NETRC": str(root / "no-netrc"), "WANDB_DATA_DIR": str(root / "wandb-staging")}  # no credentials
    name = "wandb-seeds"
    command = [
        str(Path(sys.executable).parent / "cnnlab-seeds"), "run", "--name", name, f"--root={root}",
        "--config", "configs/mnist_classifier.yaml", f"--seeds={args.seeds}", f"--jobs={args.jobs}",
        "--figures=none", f"--data.data_dir={data}", *BUDGET,
    ]  # fmt: skip
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.time() - started
    if done.returncode != 0:
        sys.exit(f"the sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")

    by_id: dict[str, list] = defaultdict(list)
    for run in offline_runs(root / name):
        by_id[run.id].append(run)
    groups = {folder.run.run_group for folders in by_id.values() for folder in folders}
    seeds, complete = [], 0
    for folders in by_id.values():
        keys = set().union(*(f.metrics() for f in folders))
        seeds.append(folders[0].config.get("seed"))
        complete += any(k.startswith("val/") for k in keys) and any(k.startswith("test/") for k in keys)
    lines = done.stderr.splitlines()
    sync = next(lines[i + 1].strip() for i, line in enumerate(lines) if "upload the sweep" in line)
    wandb_bin = Path(sys.executable).parent
    dry = subprocess.run(
        ["bash", "-c", f"{sync} --dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "PATH": f"{wandb_bin}{os.pathsep}{env['PATH']}", "WANDB_SILENT": "false"},
    )
    files = sorted(root.rglob("offline-run-*/*.wandb"))
    would = next((line.split("wandb:", 1)[1].strip() for line in dry.stderr.splitlines() if "Would sync" in line), "?")

    print(f"machine: {machine()}")
    print(f"sweep: {len(seeds)} seeds of configs/mnist_classifier.yaml, --jobs {args.jobs}, {seconds:.0f} s")
    print(f"W&B runs (distinct ids in the offline files): {len(by_id)}")
    print(f"offline folders: {sum(len(f) for f in by_id.values())} ({len(files)} .wandb files)")
    print(f"groups: {sorted(groups)}")
    print(f"runs holding val/* and test/*: {complete} of {len(by_id)}")
    print(f"distinct seeds in the runs' configs: {len(set(seeds))} (duplicates: {len(seeds) - len(set(seeds))})")
    print(f"sync command: {sync[:100]}{'...' if len(sync) > 100 else ''}")
    print(f"wandb sync --dry-run of it: {would}")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
