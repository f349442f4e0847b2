"""One-class anomaly detection on real MNIST, the standard protocol (Ruff et al. 2018): each digit in
turn is the normal class, the model trains on that digit's training images only
(configs/mnist_anomaly_<method>.yaml: ae, vae, deep_svdd, geotrans, and the recommended
configs/mnist_anomaly.yaml as "recommended"), and every anomaly score is ranked against the labels of
all 10,000 official test digits (anomaly = any other digit).

Each (model, digit, seed) is one run: `fit` with --seed_everything=<seed> (the data split, data_seed,
stays fixed), then `predict` of the validation and the test split from the run's best checkpoint. The
validation split holds held-out training digits of every class (about 10% normal), so each score has
a validation AUROC as well as a test AUROC. Every choice the tables make is made on validation only:
which score or score combination a model is marked by ("chosen on val"), and the epoch curves of the
mean val/auroc (schedule choices, e.g. Deep SVDD's 20 + 10/20/30/40 epochs, which share one run: its
learning-rate milestone is at 20). Test figures are printed for every row, never used to choose.

Printed: per model and score the test AUROC per digit as mean ± std over seeds, the mean over digits
± the mean per-digit std (and the std over seeds of the 10-digit mean), the worst digit, the mean
validation AUROC and the CPU minutes per run (fit + scoring the test split); GeoTrans scores
recombined as every subset of {dirichlet, knn, pixel_knn, loss}, standardised with the checkpoint's
own `standardise.<name>` buffers; the no-learning baseline (cosine k-NN, k=5, on blurred pixels of
the same normal training images; deterministic, so its std over seeds is 0); learned minus baseline
per digit; the mean val/auroc per epoch; the published figures.

    python benchmarks/anomaly_mnist.py [--models recommended geotrans deep_svdd ae vae] [--digits 0 ... 9]
        [--seeds 0 1 2] [--jobs N] [--threads T] [--reuse] [--out DIR] [-- CLI args for every run]
    python benchmarks/anomaly_mnist.py --jobs 2 --threads 1          # the full benchmark on 2 cores
    python benchmarks/anomaly_mnist.py --reuse                       # tables again from saved runs
    python benchmarks/anomaly_mnist.py --val-cost [--digits 0]       # GeoTrans k-NN bank, old vs new

Each run is saved as <out>/<model>_<digit>_seed<seed>.pt (predictions of both splits, run directory,
CPU seconds, per-epoch validation AUROCs, the checkpoint's standardisation), default out
benchmarks/out/anomaly/; --reuse keeps those and runs only what is missing. With --jobs N > 1 each
run is a subprocess of this script (its log in <out>/logs/) with --threads torch threads (default 1).
"""

import argparse
import csv
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from _shared_data import machine, real_mnist_root

from cnnlab.anomaly_metrics import anomaly_report

ROOT = Path(__file__).resolve().parents[1]
GEOTRANS_MODELS = ("recommended", "geotrans")
RAW_SCORES = ("dirichlet", "knn", "pixel_knn", "loss")  # GeoTrans' raw scores, recombined on validation
BASELINE = "pixel k-NN (blurred, k=5), no learning"
BASELINE_K, BASELINE_BLUR = 5, 1.0
DATA_OVERRIDES = ("data_seed", "val_size", "max_train_samples", "max_eval_samples")  # the baseline follows these

LITERATURE = [  # mean AUROC over the 10 digits, same protocol, trained from scratch (as published)
    ("DCAE (conv autoencoder, reconstruction error), in Ruff et al. 2018", 0.897),
    ("Deep SVDD one-class (Ruff et al., ICML 2018)", 0.948),
    ("OCGAN (Perera et al. 2019)", 0.975),
    ("LSA (Abati et al. 2019)", 0.975),
    ("MemAE (Gong et al. 2019)", 0.975),
    ("GeoTrans (Golan & El-Yaniv 2018), as tabulated by later papers", 0.980),
    ("ARNet (Ye et al. 2022)", 0.983),
]


def config_of(model: str) -> Path:
    name = "mnist_anomaly.yaml" if model == "recommended" else f"mnist_anomaly_{model}.yaml"
    return ROOT / "configs" / name


def config_section(model: str, section: str) -> dict:
    with open(config_of(model)) as handle:
        return yaml.safe_load(handle).get(section) or {}


def primary_score_of(model: str) -> str:
    """The score the model logs as */auroc (its class's `primary_score`)."""
    import importlib

    module, name = config_section(model, "model")["class_path"].rsplit(".", 1)
    return getattr(getattr(importlib.import_module(module), name), "primary_score", "loss")


def run_file(out: Path, model: str, digit: int, seed: int) -> Path:
    return out / f"{model}_{digit}_seed{seed}.pt"


def data_kwargs_of(overrides: list[str]) -> dict[str, int]:
    """The overrides of the train/val split and sample caps (`--data.max_train_samples=200` or
    `--data.max_train_samples 200`), so that the baseline reads the same images as the runs."""
    found = {}
    for i, arg in enumerate(overrides):
        for name in DATA_OVERRIDES:
            flag = f"--data.{name}"
            if arg.startswith(flag + "="):
                found[name] = arg.split("=", 1)[1]
            elif arg == flag and i + 1 < len(overrides):
                found[name] = overrides[i + 1]
    return {name: None if value.lower() in ("null", "none") else int(value) for name, value in found.items()}


# -- one run: fit, predict val and test, keep what the tables need ---------------------------------


def cli(subcommand: str, args: list[str]) -> None:
    from cnnlab.cli import main

    sys.argv = ["train.py"]
    main([subcommand, *args])


def train_and_predict(model: str, digit: int, seed: int, data_root: str, out: Path, overrides: list[str]) -> dict:
    """Fit on one digit with one seed, then predict the validation and the test split from the best
    checkpoint. One experiment per (model, digit, seed): `--ckpt_path best` means the experiment's newest
    run, which runs in parallel would otherwise race for."""
    from cnnlab.records import read_summary

    experiment = f"anomaly_{model}_{digit}_seed{seed}"
    common = [
        "--config", str(config_of(model)),
        "--config", str(ROOT / "configs" / "logger" / "csv.yaml"),
        f"--experiment={experiment}",
        f"--seed_everything={seed}",
        f"--data.data_dir={data_root}",
        "--data.download=false",
        f"--data.normal_classes=[{digit}]",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out / 'runs'}",
        *overrides,
    ]  # fmt: skip
    runs = out / "runs" / experiment
    before = set(runs.glob("*/summary.json"))
    started, wall = time.process_time(), time.perf_counter()
    cli("fit", common)
    saved = {"model": model, "digit": digit, "seed": seed, "fit_cpu_seconds": time.process_time() - started}
    new = set(runs.glob("*/summary.json")) - before or set(runs.glob("*/summary.json"))
    run = max(new, key=lambda p: p.stat().st_mtime).parent
    best = read_summary(run).get("best_checkpoint") or "best"
    for split in ("test", "val"):
        started = time.process_time()
        cli("predict", [*common, f"--ckpt_path={best}", f"--data.predict_split={split}"])
        saved[f"{split}_cpu_seconds"] = time.process_time() - started
        evaluation = [e for e in read_summary(run)["evaluations"] if e["data"]["split"] == split][-1]
        saved[split] = torch.load(Path(evaluation["dir"]) / "predictions.pt")
    saved["cpu_seconds"] = saved["fit_cpu_seconds"] + saved["test_cpu_seconds"]  # fit and score the test split
    saved["wall_seconds"] = time.perf_counter() - wall
    saved["threads"] = torch.get_num_threads()
    saved["run"], saved["best_checkpoint"] = str(run), str(best)
    saved["val_by_epoch"] = validation_curves(run)
    saved["standardise"] = checkpoint_standardisation(Path(run, best) if best != "best" else None)
    return saved


def validation_curves(run: Path) -> dict[str, dict[int, float]]:
    """Every `val/*auroc` column of the run's CSV logger, by epoch (0-based, as Lightning counts)."""
    curves: dict[str, dict[int, float]] = {}
    for path in sorted(run.glob("metrics*.csv")):  # a resumed run's earlier rows are in metrics-part<n>.csv
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                for column, value in row.items():
                    if column.startswith("val/") and column.endswith("auroc") and value not in ("", None):
                        curves.setdefault(column, {})[int(row["epoch"])] = float(value)
    return curves


def checkpoint_standardisation(path: Path | None) -> dict[str, tuple[float, float]]:
    """(mean, 1 / std) of each score the checkpoint standardises (`standardise.<name>.mean` [1] and
    `.precision` [1, 1]: a GaussianFit(1)), fitted by the model itself, never on the test digits."""
    if path is None or not path.is_file():
        return {}
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    found = {}
    for key, mean in state.items():
        match = re.fullmatch(r"standardise\.(\w+)\.mean", key)
        if match:
            precision = state[f"standardise.{match[1]}.precision"]
            found[match[1]] = (float(mean.reshape(-1)[0]), float(precision.reshape(-1)[0].sqrt()))
    return found


# -- scores and their AUROCs -------------------------------------------------------------------------


def scores_of(predictions: dict) -> dict[str, torch.Tensor]:
    return {key.removeprefix("score_"): value for key, value in predictions.items() if key.startswith("score_")}


def candidate_scores(saved: dict) -> dict[str, dict[str, torch.Tensor]]:
    """{split: {name: scores}}: the model's own scores, and for GeoTrans every combination of two or
    more raw scores, each standardised with the checkpoint's buffers and summed (one raw score alone
    ranks as itself)."""
    splits = {split: scores_of(saved[split]) for split in ("val", "test")}
    if saved["model"] not in GEOTRANS_MODELS:
        return splits
    fits = saved.get("standardise", {})
    raw = [name for name in RAW_SCORES if name in fits and all(name in s for s in splits.values())]
    for size in range(2, len(raw) + 1):
        for subset in itertools.combinations(raw, size):
            for scores in splits.values():
                scores[f"{'+'.join(subset)} (ckpt z)"] = sum(
                    (scores[name].double() - fits[name][0]) * fits[name][1] for name in subset
                )
    return splits


def aurocs(saved: dict) -> dict[str, dict[str, float]]:
    """{name: {"val": AUROC, "test": AUROC}}, anomaly = any digit but the run's."""
    candidates = candidate_scores(saved)
    anomalous = {split: saved[split]["label"] != saved["digit"] for split in candidates}
    return {
        name: {split: anomaly_report(candidates[split][name], anomalous[split])["auroc"] for split in candidates}
        for name in candidates["test"]
        if name in candidates["val"]
    }


# -- the no-learning baseline ------------------------------------------------------------------------


def blurred(images: torch.Tensor, sigma: float = BASELINE_BLUR) -> torch.Tensor:
    """Flattened blurred pixels, as GeoTrans.blurred_pixels computes them for pixel_knn."""
    from torchvision.transforms.v2.functional import gaussian_blur

    size = 2 * int(3 * sigma + 0.5) + 1
    return gaussian_blur(images.float(), [size, size], [sigma, sigma]).flatten(1)


def baseline(digit: int, data_root: str, data_kwargs: dict, out: Path) -> dict:
    """Val and test AUROC of the cosine k-NN distance of blurred pixels ([0, 1], unpadded: the images
    GeoTrans' pixel_knn scores) to the digit's normal training images of the runs' train/val split."""
    path = out / f"baseline_{digit}.pt"
    if path.is_file():
        saved = torch.load(path)
        if saved.get("data_kwargs") == data_kwargs:
            return saved
    from datamodules import MNISTDataModule
    from lightning_modules.nearest_neighbours import NearestNeighbours

    started = time.process_time()
    data = MNISTDataModule(
        data_dir=data_root, normal_classes=[digit], normalize=False, augment=False, download=False, **data_kwargs
    )
    data.prepare_data()  # unpacks the .gz files
    data.setup("fit")
    data.setup("test")
    train, _ = data.samples("train")
    neighbours = NearestNeighbours(BASELINE_K, "cosine")
    neighbours.fit(blurred(data.model_input(train[neighbours.bank_indices(len(train))])))
    saved = {"data_kwargs": data_kwargs}
    for split in ("val", "test"):
        images, labels = data.samples(split)
        score = neighbours.distance(blurred(data.model_input(images)))
        saved[split] = anomaly_report(score, labels != digit)["auroc"]
    saved["cpu_seconds"] = time.process_time() - started
    torch.save(saved, path)
    return saved


# -- running many runs at once -------------------------------------------------------------------------


def run_all(todo: list[tuple[str, int, int]], args, data_root: str, out: Path) -> list[str]:
    """Each (model, digit, seed) as a subprocess of this script (`--one`), `args.jobs` at a time.
    Returns the failures."""
    env = dict(os.environ)
    if args.threads:  # the BLAS/OpenMP pools too, not only torch's intra-op threads
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    (out / "logs").mkdir(exist_ok=True)
    pending, running, failed = list(todo), {}, []
    while pending or running:
        while pending and len(running) < args.jobs:
            model, digit, seed = job = pending.pop(0)
            command = [sys.executable, str(Path(__file__).resolve()), "--one", model, str(digit), str(seed)]
            command += ["--out", str(out), "--data-root", data_root]
            command += ["--threads", str(args.threads)] if args.threads else []
            command += ["--", *args.overrides]
            log = out / "logs" / f"{model}_{digit}_seed{seed}.log"
            # one run at a time: its output on the terminal; several: each its own log
            sink = None if args.jobs == 1 else open(log, "w")  # noqa: SIM115 (closed when the run ends)
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT if sink else None)
            running[proc] = (job, sink, log, time.perf_counter())
            print(f"started {model} digit {digit} seed {seed}" + (f" (log {log})" if sink else ""), flush=True)
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            (model, digit, seed), sink, log, begun = running.pop(proc)
            if sink:
                sink.close()
            what = f"{model} digit {digit} seed {seed}"
            if proc.returncode:
                failed.append(f"{what}: exit {proc.returncode}" + (f", see {log}" if sink else ""))
            print(f"{'FAILED' if proc.returncode else 'done'} {what} ({time.perf_counter() - begun:.0f} s)", flush=True)
    return failed


# -- tables ------------------------------------------------------------------------------------------


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def std(values) -> float:
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def score_rows(runs: list[dict], digits: list[int]) -> dict[str, dict]:
    """Per score name of one model: test AUROC per digit over seeds, the summaries of the table."""
    results: dict[str, dict[int, dict[int, dict[str, float]]]] = {}  # name -> digit -> seed -> {val, test}
    for saved in runs:
        for name, value in saved["aurocs"].items():
            results.setdefault(name, {}).setdefault(saved["digit"], {})[saved["seed"]] = value
    rows = {}
    for name, by_digit in results.items():
        present = [d for d in digits if d in by_digit]
        per_digit = {d: [v["test"] for v in by_digit[d].values()] for d in present}
        means = {d: mean(v) for d, v in per_digit.items()}
        seeds = set.intersection(*(set(by_digit[d]) for d in present)) if present else set()
        seed_means = [mean(by_digit[d][s]["test"] for d in present) for s in sorted(seeds)]
        worst = min(present, key=lambda d: means[d]) if present else None
        rows[name] = {
            "cells": {d: (means[d], std(per_digit[d]), len(per_digit[d])) for d in present},
            "mean": mean(means.values()),
            "spread": mean(std(v) for v in per_digit.values()),
            "seed_std_of_mean": std(seed_means),
            "worst": (means[worst], worst) if worst is not None else (float("nan"), "-"),
            "val": mean(v["val"] for d in present for v in by_digit[d].values()),
            "complete": len(present) == len(digits),
        }
    return rows


def cell(value: float, spread: float) -> str:
    return f"{value:.3f} ± {spread:.3f}"


def print_tables(saved_runs: dict[str, list[dict]], baselines: dict[int, dict], args) -> None:
    digits = args.digits
    n_test = next((len(r["test"]["label"]) for runs in saved_runs.values() for r in runs), 10000)
    print(f"\n== One-class MNIST, test AUROC on all {n_test} test digits, {time.strftime('%Y-%m-%d')}, {machine()}")
    threads = sorted({r.get("threads") for runs in saved_runs.values() for r in runs} - {None})
    print(
        f"seeds {args.seeds} (--seed_everything; data_seed fixed); torch threads per run {threads}; cells: mean ± std "
        "over seeds; mean: over digits of the per-digit means ± the mean per-digit std; seed std: std over seeds of "
        "the 10-digit mean; CPU min: fit + scoring the test split, per run. The row marked 'chosen on val' has the "
        "highest mean validation AUROC of its model; test figures choose nothing."
    )
    print("| method: score | " + " | ".join(str(d) for d in digits) + " | mean | seed std | worst | val | CPU min |")
    print("| --- |" + " ---: |" * (len(digits) + 5))
    rows_of = {}
    for model, runs in saved_runs.items():
        if not runs:
            continue
        rows_of[model] = rows = score_rows(runs, digits)
        complete = [name for name in rows if rows[name]["complete"]] or list(rows)
        chosen = max(complete, key=lambda name: rows[name]["val"])
        minutes = mean(r["cpu_seconds"] for r in runs) / 60
        primary = primary_score_of(model)
        for name, row in rows.items():
            label = name + (" (primary)" if name == primary else "") + (" **chosen on val**" if name == chosen else "")
            cells = " | ".join(cell(*row["cells"][d][:2]) if d in row["cells"] else "-" for d in digits)
            value, worst = row["worst"]
            print(
                f"| {model}: {label} | {cells} | **{cell(row['mean'], row['spread'])}** "
                f"| {row['seed_std_of_mean']:.3f} | {value:.3f} ({worst}) | {row['val']:.4f} | {minutes:.1f} |"
            )
    if baselines:
        base = {d: baselines[d]["test"] for d in digits if d in baselines}
        worst = min(base, key=base.get)
        cells = " | ".join(cell(base[d], 0.0) if d in base else "-" for d in digits)
        minutes = mean(b["cpu_seconds"] for b in baselines.values()) / 60
        print(
            f"| {BASELINE} | {cells} | **{cell(mean(base.values()), 0.0)}** | 0.000 | {base[worst]:.3f} ({worst}) "
            f"| {mean(b['val'] for b in baselines.values()):.4f} | {minutes:.1f} |"
        )
        print("The baseline learns nothing and draws nothing at random: the same for every seed (std 0).")
        print_against_baseline(rows_of, base, digits)
    print_epoch_curves(saved_runs)
    print("\nPublished, same protocol (mean over the 10 digits):")
    for name, value in LITERATURE:
        print(f"| {name} | {value:.3f} |")


def print_against_baseline(rows_of: dict[str, dict], base: dict[int, float], digits: list[int]) -> None:
    """Learned minus baseline per digit for each model's primary score, against the seeds' std."""
    print("\nLearned minus baseline (test AUROC, mean over seeds); '>sd': the difference exceeds the std over seeds")
    print("| method: score | " + " | ".join(str(d) for d in digits) + " | mean | digits >sd |")
    print("| --- |" + " ---: |" * (len(digits) + 2))
    for model, rows in rows_of.items():
        name = primary_score_of(model)
        if name not in rows:
            continue
        diffs = {d: (m - base[d], s) for d, (m, s, _) in rows[name]["cells"].items() if d in base}
        cells = " | ".join(
            f"{diffs[d][0]:+.3f} {'>sd' if diffs[d][0] > diffs[d][1] else '<=sd'}" if d in diffs else "-"
            for d in digits
        )
        above = sum(diff > s for diff, s in diffs.values())
        print(f"| {model}: {name} | {cells} | {mean(d for d, _ in diffs.values()):+.3f} | {above}/{len(diffs)} |")


def print_epoch_curves(saved_runs: dict[str, list[dict]]) -> None:
    """Mean val/auroc after each epoch over digits x seeds: what a schedule is chosen on."""
    print("\nMean val/auroc (primary score) after N epochs, over digits x seeds (validation digits only):")
    for model, runs in saved_runs.items():
        by_epoch: dict[int, list[float]] = {}
        for saved in runs:
            for epoch, value in saved.get("val_by_epoch", {}).get("val/auroc", {}).items():
                by_epoch.setdefault(epoch + 1, []).append(value)
        if not by_epoch:
            print(f"- {model}: no val/auroc in the runs' metrics.csv")
            continue
        curve = {n: mean(v) for n, v in sorted(by_epoch.items())}
        best = max(curve, key=curve.get)
        print(f"- {model}: " + ", ".join(f"{n}: {v:.4f}" for n, v in curve.items()) + f" (highest after {best})")
        if model == "deep_svdd":  # pretraining 20 epochs, milestone at 20: 20 + k SVDD epochs is one run's epoch 20 + k
            chosen = [n for n in (30, 40, 50, 60) if n in curve]
            if chosen:
                print("  deep_svdd 20+10/20/30/40: " + ", ".join(f"20+{n - 20}: {curve[n]:.4f}" for n in chosen))


# -- GeoTrans' k-NN bank, old against new ---------------------------------------------------------------


def timed(compute):
    cpu, wall = time.process_time(), time.perf_counter()
    result = compute()
    return time.process_time() - cpu, time.perf_counter() - wall, result


@torch.no_grad()
def val_cost(args, data_root: str) -> None:
    """The bank of normal training features: `model(x)[1]` (all K transformations, what fit's validation
    ran) against one `features_and_logits` pass of the untransformed image, interleaved, same model."""
    from datamodules import MNISTDataModule
    from lightning_modules import GeoTrans

    init = config_section("recommended", "model")["init_args"]
    init = {k: v for k, v in init.items() if k not in ("optimizer", "lr_scheduler")}  # training only
    torch.manual_seed(0)
    model = GeoTrans(**init).eval()
    digit = args.digits[0]
    batch_size = 2 * config_section("recommended", "data")["init_args"]["batch_size"]  # the eval batch size
    data = MNISTDataModule(
        data_dir=data_root, normal_classes=[digit], normalize=False, augment=False, download=False,
        **data_kwargs_of(args.overrides),
    )  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    train = data.model_input(data.samples("train")[0])
    val_images, val_labels = data.samples("val")
    val = data.model_input(val_images)
    chunks = train.split(500)  # as CnnlabModule.training_images reads them

    def old() -> torch.Tensor:
        return torch.cat([model(x)[1] for x in chunks])

    def new() -> torch.Tensor:
        return torch.cat([model.features_and_logits(model.transformations.prepare(x))[0].float() for x in chunks])

    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    features = {}
    for repeat in range(args.repeats):
        for name, compute in (("old", old), ("new", new)) if repeat % 2 == 0 else (("new", new), ("old", old)):
            cpu, wall, features[name] = timed(compute)
            times[name].append((cpu, wall))
    same = torch.allclose(features["old"], features["new"], rtol=1e-5, atol=1e-6)
    difference = (features["old"] - features["new"]).abs().max().item()

    if model.neighbours is not None:
        model.neighbours.fit(features["new"])
    if model.pixel_neighbours is not None:
        model.pixel_neighbours.fit(model.blurred_pixels(train))

    def score_val() -> None:
        for i in range(0, len(val), batch_size):
            model.anomaly_scores((val[i : i + batch_size], val_labels[i : i + batch_size]))

    def fit_subset() -> None:
        for x in train[:500].split(batch_size):
            model(x)

    normal = val_labels == digit

    def score_normal_val() -> None:  # what the old protocol's validation split held: the normal digits only
        x = val[normal]
        for i in range(0, len(x), batch_size):
            model.anomaly_scores((x[i : i + batch_size], val_labels[normal][i : i + batch_size]))

    for name, compute in (("val", score_val), ("normal", score_normal_val), ("fit", fit_subset)):
        times[name] = [timed(compute)[:2] for _ in range(args.repeats)]

    k = len(model.transformations)
    median = {name: tuple(statistics.median(p) for p in zip(*t, strict=True)) for name, t in times.items()}  # CPU, wall
    print(f"\n== GeoTrans validation cost, digit {digit}, {machine()}, torch threads {torch.get_num_threads()}")
    print(f"recommended config, K = {k} transformations, {args.repeats} interleaved repeats each, medians")
    print("| part | images x passes | CPU s | wall s | each repeat (CPU s) |")
    print("| --- | ---: | ---: | ---: | --- |")
    parts = [
        ("old", f"k-NN bank, old: model(x)[1], all {k} transformations", f"{len(train)} x {k}"),
        ("new", "k-NN bank, new: features_and_logits of the untransformed image", f"{len(train)} x 1"),
        ("val", "scoring the validation split (anomaly_scores)", f"{len(val)} x {k}"),
        ("normal", "scoring its normal digits only (the old validation split)", f"{int(normal.sum())} x {k}"),
        ("fit", "fit subset: 500 training images", f"{min(500, len(train))} x {k}"),
    ]
    for name, what, size in parts:
        cpu, wall = median[name]
        print(f"| {what} | {size} | {cpu:.2f} | {wall:.2f} | {', '.join(f'{c:.2f}' for c, _ in times[name])} |")
    ratio_cpu, ratio_wall = median["old"][0] / median["new"][0], median["old"][1] / median["new"][1]
    print(f"bank, old / new: {ratio_cpu:.1f}x CPU, {ratio_wall:.1f}x wall", end="; ")
    print(f"same features: {same} (max |diff| {difference:.2e})")
    old_pass = [median["old"][i] + median["normal"][i] for i in (0, 1)]
    same_split = [median["old"][i] + median["val"][i] for i in (0, 1)]
    new_pass = [median["new"][i] + median["val"][i] + median["fit"][i] for i in (0, 1)]
    print(
        f"validation pass, CPU s / wall s: new (new bank + scoring {len(val)} + fit subset) "
        f"{new_pass[0]:.1f} / {new_pass[1]:.1f}; old (old bank + scoring the {int(normal.sum())} normal digits) "
        f"{old_pass[0]:.1f} / {old_pass[1]:.1f}, {old_pass[0] / new_pass[0]:.1f}x the new CPU; old bank on the "
        f"new split (old bank + scoring {len(val)}) {same_split[0]:.1f} / {same_split[1]:.1f}, "
        f"{same_split[0] / new_pass[0]:.1f}x"
    )


# -- main ----------------------------------------------------------------------------------------------


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["recommended", "geotrans", "deep_svdd", "ae", "vae"])
    parser.add_argument("--digits", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="--seed_everything of the runs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each a subprocess")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 with --jobs > 1)")
    parser.add_argument("--reuse", action="store_true", help="keep saved runs; run only the missing ones")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "anomaly"))
    parser.add_argument("--val-cost", action="store_true", help="time GeoTrans' k-NN bank, old against new")
    parser.add_argument("--repeats", type=int, default=3, help="--val-cost: interleaved repeats of each")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "DIGIT", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="more CLI arguments for every run (after --)")
    args = parser.parse_args(argv)
    if args.threads is None and args.jobs > 1:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = args.data_root or real_mnist_root()
    try:
        benchmark(args, out, data_root)
    finally:
        if not args.data_root:  # ours: a temporary root the runs unpacked MNIST into
            shutil.rmtree(data_root, ignore_errors=True)


def benchmark(args, out: Path, data_root: str) -> None:
    if args.one:
        model, digit, seed = args.one[0], int(args.one[1]), int(args.one[2])
        saved = train_and_predict(model, digit, seed, data_root, out, args.overrides)
        path = run_file(out, model, digit, seed)
        torch.save(saved, path.with_suffix(".part"))
        os.replace(path.with_suffix(".part"), path)  # a killed run leaves no file that --reuse would take
        return
    if args.val_cost:
        val_cost(args, data_root)
        return

    for model in args.models:
        if not config_of(model).is_file():
            sys.exit(f"no config {config_of(model)} for --models {model}")
    grid = [(m, d, s) for m in args.models for d in args.digits for s in args.seeds]
    todo = [job for job in grid if not (args.reuse and run_file(out, *job).is_file())]
    failed = run_all(todo, args, data_root, out) if todo else []

    saved_runs: dict[str, list[dict]] = {model: [] for model in args.models}
    for model, digit, seed in grid:
        path = run_file(out, model, digit, seed)
        if not path.is_file():
            continue
        saved = torch.load(path, weights_only=False)
        saved["aurocs"] = aurocs(saved)
        saved_runs[model].append(saved)
        print(f"{model} digit {digit} seed {seed}: test/val AUROC " + ", ".join(
            f"{name} {v['test']:.4f}/{v['val']:.4f}" for name, v in saved["aurocs"].items()
        ))  # fmt: skip
    data_kwargs = data_kwargs_of(args.overrides)
    baselines = {d: baseline(d, data_root, data_kwargs, out) for d in args.digits}
    print_tables(saved_runs, baselines, args)
    if failed:
        sys.exit("failed runs (not in the tables):\n" + "\n".join(failed))


if __name__ == "__main__":
    main_()
