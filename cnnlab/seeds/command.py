"""`cnnlab-seeds`: run a config over many seeds, report a sweep, compare sweeps, or run one seed the
way the launcher does (for `wandb agent` on a cluster)."""

import argparse
import json
import os
import sys
from pathlib import Path

from cnnlab.environment import DEBUG_ENV
from cnnlab.errors import CnnlabError
from cnnlab.run_dir import RUNS_ROOT

ONE_HELP = """usage: cnnlab-seeds one --config CONFIG.yaml [--experiment NAME] --seed_everything=N [train.py options]

Run one seed as the launcher does: fit, then test of its best checkpoint, each with its own record (the
run's summary.json lists the test). Every argument goes to the CLI as for `train.py fit`; an explicit
integer --seed_everything=N is required (a W&B sweep over seed_everything passes it). W&B runs get group
= --experiment (default: the first config's name), job type seed and tags naming the configs.
`python train.py fit --help` lists the options.
"""

EXAMPLES = """
examples:
  cnnlab-seeds run --config configs/mnist_classifier.yaml --seeds 0-99 --jobs 4 --name mnist-cnn
  cnnlab-seeds run --config configs/mnist_classifier.yaml --seeds 0-99 --name mnist-cnn-noaug --data.augment false
  cnnlab-seeds run --config configs/mnist_classifier.yaml --seeds 0-99 --name mnist-cnn --backend ray --address auto
  cnnlab-seeds report mnist-cnn
  cnnlab-seeds compare mnist-cnn-noaug mnist-cnn --metric test/acc
  python -m cnnlab.seeds one --config configs/mnist_classifier.yaml --experiment mnist-cnn --seed_everything=3
"""


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="cnnlab-seeds",
        description="Seeds at scale: one config over many model seeds, their distributions, and comparisons.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = main.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        allow_abbrev=False,
        help="run (or resume) a sweep: fit + test of each seed in warm worker processes",
        description="Run one config over a range of model seeds. Any other --model/--data/--trainer option "
        "is passed to every seed. Running the same command again resumes: finished seeds are kept.",
    )
    run.add_argument("--config", action="append", required=True, help="experiment YAML (repeatable, as train.py)")
    run.add_argument("--seeds", required=True, help="model seeds, e.g. 0-99 or 0,1,2 or 0-9,100-109")
    run.add_argument("--name", help="sweep name: runs in <root>/<name>/, W&B group (default: the config's name)")
    run.add_argument(
        "--jobs",
        type=int,
        help="seeds running at once, at most (default: 1 on the local pool; on Ray, as many as the cluster holds)",
    )
    run.add_argument("--root", default=RUNS_ROOT, help=f"where sweeps live (default {RUNS_ROOT}/)")
    run.add_argument("--timeout", type=float, help="seconds one seed may take before its worker is replaced")
    run.add_argument(
        "--threads",
        type=int,
        help="torch threads per worker (default: OMP_NUM_THREADS where set, else CPU cores / jobs; on Ray, "
        "--cpus-per-seed)",
    )
    run.add_argument("--gpus", help="GPU ids to share out round-robin, e.g. 0,1 (default: all visible; 'none': CPU)")
    run.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: warm worker processes on this machine (default); ray: warm Ray actors on a cluster "
        '(pip install -e ".[ray]"; the sweep folder must be on storage every node shares)',
    )
    run.add_argument(
        "--address",
        help="Ray: the cluster, auto (the one `ray start` made here) or HOST:PORT (default: RAY_ADDRESS where set, "
        "else a Ray instance on this machine)",
    )
    run.add_argument("--cpus-per-seed", type=int, help="Ray: CPUs (and torch threads) each seed asks for (default 1)")
    run.add_argument(
        "--gpus-per-seed",
        type=float,
        help="Ray: GPUs each seed asks for; 0.5 packs two seeds on one GPU (default 0; a cluster without GPUs runs "
        "the seeds on CPU)",
    )
    run.add_argument("--tag", action="append", default=[], help="extra W&B tag (repeatable)")
    run.add_argument("--job-type", default="seed", help="W&B job_type of the seed runs (default seed)")
    run.add_argument("--no-retry-failed", action="store_true", help="on resume, leave failed seeds failed")
    run.add_argument(
        "--figures",
        choices=("first", "all", "none"),
        default="first",
        help="which seeds' figure callbacks draw (default: the first seed only); their metrics are logged for all",
    )

    report = sub.add_parser(
        "report",
        help="distributions, statistics and the best seed of a sweep (PNG, Markdown, CSV)",
        description="Report a sweep from its registry (no server needed), or from W&B with --from-wandb.",
    )
    report.add_argument("name", help="sweep name (or its directory)")
    report.add_argument("--root", default=RUNS_ROOT)
    report.add_argument("--out", help="output folder (default <root>/<name>/report/)")
    report.add_argument(
        "--metrics",
        help="comma-separated metrics (default: final val/test loss and accuracy, and the model's primary metric)",
    )
    report.add_argument(
        "--wandb",
        choices=("auto", "on", "off"),
        default="auto",
        help="log the report to W&B: auto = when the sweep logged to W&B and W&B is online",
    )
    report.add_argument("--from-wandb", metavar="ENTITY/PROJECT", help="read the runs of group NAME from the W&B API")

    compare = sub.add_parser(
        "compare",
        help="compare sweeps: difference of means with its interval (paired or Welch t below 70 seeds, BCa from 70), "
        "Hedges' g, t and permutation tests, verdict",
    )
    compare.add_argument("names", nargs="+", help="sweeps; the first is the baseline the others are compared to")
    compare.add_argument("--root", default=RUNS_ROOT)
    compare.add_argument(
        "--metric",
        help="metric to decide on (default: the first sweep's primary metric, e.g. test/acc or test/auroc)",
    )
    compare.add_argument("--paired", action="store_true", help="pair runs by seed (both sweeps over the same seeds)")
    compare.add_argument("--out", help="output folder (default <root>/comparisons/<a>--<b>/)")

    sub.add_parser(
        "one",
        add_help=False,
        help="run one seed as the launcher does (fit, then test its best checkpoint): for wandb agent",
        description=ONE_HELP,
    )
    return main


def run_command(args: argparse.Namespace, overrides: list[str]) -> int:
    from cnnlab.seeds.launcher import Launcher
    from cnnlab.seeds.sweep import Sweep, parse_seeds

    gpus = None
    if args.gpus is not None:
        gpus = [] if args.gpus.strip().lower() in ("none", "") else [g.strip() for g in args.gpus.split(",")]
    sweep = Sweep(
        name=args.name or Path(args.config[0]).stem,
        configs=args.config,
        seeds=parse_seeds(args.seeds),
        overrides=overrides,
        root=Path(args.root),
        jobs=args.jobs,
        threads=args.threads,
        timeout=args.timeout,
        gpus=gpus,
        tags=args.tag,
        job_type=args.job_type,
        retry_failed=not args.no_retry_failed,
        figures=args.figures,
        backend=args.backend,
        address=args.address,
        cpus_per_seed=args.cpus_per_seed,
        gpus_per_seed=args.gpus_per_seed,
    )
    if sweep.backend == "ray":
        from cnnlab.seeds.ray_backend import RayLauncher

        return RayLauncher(sweep).run()
    return Launcher(sweep).run()


def report_command(args: argparse.Namespace) -> int:
    from cnnlab.seeds import report

    if args.from_wandb:
        results = report.load_from_wandb(args.from_wandb, args.name, api=report.wandb_api())
        out = Path(args.out or Path(args.root) / f"{args.name}-wandb" / "report")
    else:
        results = report.load_sweep(args.name, args.root)
        out = Path(args.out or report.sweep_dir(args.name, args.root) / "report")
    metrics = report.metrics_to_report([results], args.metrics.split(",") if args.metrics else None)
    paths = report.write_report(results, out, metrics)
    print(paths["markdown"].read_text())
    print(f"written: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    used_wandb = any(r.wandb_id for r in results.records) or bool(args.from_wandb)
    if args.wandb == "on" or (args.wandb == "auto" and used_wandb and report.wandb_online()):
        print(f"logged to W&B: {report.log_to_wandb(results, metrics, paths, out)}", file=sys.stderr)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from cnnlab.seeds import compare, report

    sweeps = [report.load_sweep(name, args.root) for name in args.names]
    metric = compare.pick_metric(sweeps, args.metric)
    out = Path(args.out or Path(args.root) / "comparisons" / "--".join(s.name for s in sweeps))
    paths = compare.write_comparison(sweeps, metric, out, paired=args.paired)
    print(paths["markdown"].read_text())
    print(f"written: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def one_command(argv: list[str]) -> int:
    """One seed, fit + test, in this process; the seed comes from --seed_everything (as wandb agent
    passes it: --seed_everything=N)."""
    if any(token in ("-h", "--help") for token in argv):
        print(ONE_HELP)
        return 0
    seed = None
    for i, token in enumerate(argv):
        key, eq, value = token.partition("=")
        if key == "--seed_everything":
            value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            seed = int(value) if value.isdigit() else None
    if seed is None:
        raise CnnlabError(
            "cnnlab-seeds one needs an explicit integer model seed, --seed_everything=N (a W&B sweep over "
            "seed_everything passes it); a sweep never relies on a default seed."
        )
    from cnnlab.seeds.sweep import wandb_labels
    from cnnlab.seeds.worker import run_seed

    configs, experiment = [], None
    for i, token in enumerate(argv):
        key, eq, value = token.partition("=")
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if key in ("--config", "-c"):
            configs.append(value)
        elif key == "--experiment":
            experiment = value
    group = experiment or (Path(configs[0]).stem if configs else "seeds")
    result = run_seed(seed, list(argv), env=wandb_labels(group, configs, "seed", []))
    print(json.dumps({k: result.get(k) for k in ("seed", "status", "metrics", "run_dir", "error")}, indent=2))
    return 0 if result["status"] == "finished" else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cnnlab-seeds`; a CnnlabError is printed as its paragraph (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["one"]:
            return one_command(argv[1:])
        args, unknown = parser().parse_known_args(argv)
        if args.command == "run":
            return run_command(args, unknown)
        if unknown:
            parser().error(f"unrecognized arguments: {' '.join(unknown)}")
        return report_command(args) if args.command == "report" else compare_command(args)
    except CnnlabError as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"\ncnnlab-seeds: error: {err}\n(set CNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a sweep's seeds started (connecting to Ray, checking its nodes)
        print("\ncnnlab-seeds: stopped (Ctrl-C). A sweep resumes with the same command.", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
