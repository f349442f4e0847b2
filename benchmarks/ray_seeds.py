"""`cnnlab-seeds run --backend ray` against the local pool, and under a node lost mid-sweep (issue 21).

    python benchmarks/ray_seeds.py [--seeds 0-19] [--jobs 2] [--fault-seeds 0-99] [--parts compare,fault]

compare: the same seeds at the distributions' budget (benchmarks/seeds_distributions.py: one epoch on
  3,000 real training digits, batch 32, validation on 1,000, test on the 10,000 official test digits),
  once on the local pool and once on a Ray instance of this machine, same --jobs, one after the
  other, each a whole `cnnlab-seeds run` process timed from start to exit. Prints both wall times,
  their ratio, whether every seed's metrics agree, and the driver's CPU time per seed (the Ray
  driver's loop from its first actor to its last result: scheduling, registry, result handling;
  RayLauncher records it in the registry) with the seeds per second one driver could feed at that
  cost.
fault: a sweep over 2 simulated nodes (ray.cluster_utils.Cluster: a head without CPUs, two nodes of
  1 CPU) at a small budget per seed; one node is removed once a third of the seeds have finished.
  Counts finished seeds, seeds with more than one complete run (duplicates), seeds without a
  finished record or whose record disagrees with its run (lost), and the attempts lost with the node.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared_data import machine
from seeds_distributions import BUDGET, unpacked_mnist
from wandb_seed_runs import BUDGET as TINY_BUDGET

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnlab.seeds.registry import Registry, is_complete, outcome_of  # noqa: E402
from cnnlab.seeds.sweep import parse_seeds  # noqa: E402

CONFIG = ["--config=configs/mnist_classifier.yaml", "--figures=none"]
SMALL = ["--config=configs/logger/csv.yaml", *TINY_BUDGET]  # the fault run: about two seconds a seed


def run_sweep(args: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab.seeds", "run", *args], cwd=ROOT, check=True, env=env)
    return time.perf_counter() - start


def records(sweep_dir: Path) -> dict:
    with Registry(sweep_dir, create=False) as registry:
        return {r.seed: r for r in registry.records()}, registry.meta()


def compare(opts, data: Path, root: Path) -> None:
    common = [*CONFIG, *BUDGET, f"--data.data_dir={data}", f"--seeds={opts.seeds}", f"--jobs={opts.jobs}"]
    common += [f"--root={root}", "--threads=1"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    wall = {
        "local": run_sweep([*common, "--name=local"], env),
        "ray": run_sweep([*common, "--name=ray", "--backend=ray", "--cpus-per-seed=1"], env),
    }
    local, _ = records(root / "local")
    ray, meta = records(root / "ray")
    same = sum(local[s].metrics == ray[s].metrics for s in local)
    driver = meta["last_driver"]
    per_seed = driver["cpu_seconds"] / driver["seeds"]
    seed_wall = sum(r.seconds for r in ray.values()) / len(ray)
    print(f"\n== compare: {len(local)} seeds, --jobs {opts.jobs}, 1 torch thread each ({machine()})")
    print(f"local pool: {wall['local']:.1f} s wall; Ray instance: {wall['ray']:.1f} s wall")
    print(f"Ray / local: {wall['ray'] / wall['local']:.3f} ({100 * (wall['ray'] / wall['local'] - 1):+.1f}%)")
    print(f"seeds with identical metrics on both: {same} of {len(local)}")
    print(
        f"driver CPU (Ray, first actor to last result): {driver['cpu_seconds']:.3f} s for {driver['seeds']} seeds "
        f"= {1000 * per_seed:.1f} ms a seed; one driver at that cost feeds {1 / per_seed:.0f} seeds/s, i.e. "
        f"{seed_wall / per_seed:.0f} workers busy with {seed_wall:.1f}-s seeds"
    )


def fault(opts, data: Path, root: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20) for _ in range(2)]
    cluster.wait_for_nodes()
    sweep = root / "fault"
    args = [*CONFIG, *SMALL, f"--data.data_dir={data}", f"--seeds={opts.fault_seeds}", "--name=fault"]
    args += [f"--root={root}", "--backend=ray", f"--address={cluster.address}", "--threads=1"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    driver = subprocess.Popen([sys.executable, "-m", "cnnlab.seeds", "run", *args], cwd=ROOT, env=env)
    total = len(parse_seeds(opts.fault_seeds))
    victim = nodes[1]
    try:
        removed = None
        while driver.poll() is None:
            time.sleep(1)
            if removed is None and (sweep / "registry.sqlite").is_file():
                recs, _ = records(sweep)
                done = sum(r.status == "finished" for r in recs.values())
                on_victim = [r.seed for r in recs.values() if r.status == "running" and r.node_id == victim.node_id]
                if done >= total // 3 and on_victim:
                    cluster.remove_node(victim)
                    removed = (done, on_victim)
        code = driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
        ray.shutdown()
        cluster.shutdown()
    wall = time.perf_counter() - start
    recs, _ = records(sweep)
    complete = {}
    for summary_path in sweep.glob("*-seed*/summary.json"):
        summary = json.loads(summary_path.read_text())
        if is_complete(summary, summary.get("seed")):
            complete.setdefault(summary["seed"], []).append(summary_path.parent)
    finished = [s for s, r in recs.items() if r.status == "finished"]
    duplicates = [s for s, runs in complete.items() if len(runs) > 1]
    lost = [
        s
        for s, r in recs.items()
        if r.status != "finished"
        or s not in complete
        or outcome_of(json.loads((Path(r.run_dir) / "summary.json").read_text()))["metrics"] != r.metrics
    ]
    lost_attempts = [(s, h["attempt"]) for s, r in recs.items() for h in r.history]
    interrupted_runs = [
        p.parent for p in sweep.glob("*-seed*/summary.json") if json.loads(p.read_text())["status"] == "interrupted"
    ]
    nodes_used = {r.node_id for r in recs.values()}
    print(f"\n== fault: {total} seeds over 2 simulated nodes of 1 CPU ({machine()})")
    if removed:
        print(f"node {victim.node_id[:8]} removed after {removed[0]} seeds finished, while it ran seeds {removed[1]}")
    else:
        print("the sweep ended before a node could be removed")
    print(f"driver exit code {code}, {wall:.0f} s wall; seeds ran on {len(nodes_used)} nodes")
    print(f"finished: {len(finished)} of {total}; duplicates: {len(duplicates)} {duplicates}; lost: {len(lost)} {lost}")
    print(
        f"attempts lost with the node and run again: {lost_attempts}; runs marked interrupted: {len(interrupted_runs)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0-19")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fault-seeds", default="0-99")
    parser.add_argument("--parts", default="compare,fault")
    parser.add_argument("--root", help="where the sweeps go (default: a new temporary folder)")
    opts = parser.parse_args()
    root = Path(opts.root or tempfile.mkdtemp(prefix="cnnlab-ray-seeds-")).resolve()
    data = unpacked_mnist(root / "data")
    print(f"sweeps in {root}")
    if "compare" in opts.parts:
        compare(opts, data, root)
    if "fault" in opts.parts:
        fault(opts, data, root)


if __name__ == "__main__":
    main()
