"""One-class anomaly detection on real MNIST, the standard protocol (Ruff et al. 2018): each digit in
turn is the normal class, the model is trained on that digit's training images only
(configs/mnist_anomaly_<method>.yaml: ae, vae, deep_svdd, geotrans, and the recommended
configs/mnist_anomaly.yaml as "recommended"), and every anomaly score is ranked against the labels of
all 10,000 official test digits (anomaly = any other digit). Prints one table of methods: the AUROC
of each method and score per digit, the mean and the worst digit over the 10, and the CPU minutes per
digit of fit plus scoring the test split, beside the published figures of the same protocol.

    python benchmarks/anomaly_mnist.py [--models recommended geotrans deep_svdd ae vae] [--digits 0 ... 9]
                                       [--reuse] [--threads N] [--out DIR] [-- CLI args]

Predictions (test and validation split) are kept under --out (default benchmarks/out/anomaly/), so --reuse
recomputes the table from them without training again.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _shared_data import machine, real_mnist_root
from scipy.stats import rankdata

from cnnlab.cli import main
from cnnlab.records import read_summary

ROOT = Path(__file__).resolve().parents[1]


def cli(subcommand: str, args: list[str]) -> None:
    sys.argv = ["train.py"]
    main([subcommand, *args])


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


def train_and_predict(model: str, digit: int, data_root: str, out: Path, overrides: list[str]) -> dict:
    """Fit on one digit, then predict the validation split (normal digits) and the test split."""
    experiment = f"anomaly_{model}_{digit}"
    common = [
        "--config", str(config_of(model)),
        "--config", str(ROOT / "configs" / "logger" / "csv.yaml"),
        f"--experiment={experiment}",
        f"--data.data_dir={data_root}",
        "--data.download=false",
        f"--data.normal_classes=[{digit}]",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out / 'runs'}",
        *overrides,
    ]  # fmt: skip
    started = time.process_time()
    cli("fit", common)
    saved = {"fit_cpu_seconds": time.process_time() - started}
    run = max((out / "runs" / experiment).glob("*/summary.json"), key=lambda p: p.stat().st_mtime).parent
    for split in ("test", "val"):
        started = time.process_time()
        cli("predict", [*common, "--ckpt_path=best", f"--data.predict_split={split}"])
        saved[f"{split}_cpu_seconds"] = time.process_time() - started
        (evaluation,) = [e for e in read_summary(run)["evaluations"] if e["data"]["split"] == split]
        saved[split] = torch.load(Path(evaluation["dir"]) / "predictions.pt")
    saved["cpu_seconds"] = saved["fit_cpu_seconds"] + saved["test_cpu_seconds"]  # fit and score the test split
    saved["run"] = str(run)
    return saved


def auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic, ties counted half. (torchmetrics'
    binary_auroc would squash scores outside [0, 1] through a sigmoid, which ties all large ones.)"""
    ranks = torch.from_numpy(rankdata(score.double().numpy()))
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def scores_of(predictions: dict) -> dict[str, torch.Tensor]:
    return {key.removeprefix("score_"): value for key, value in predictions.items() if key.startswith("score_")}


def standardised(test: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    return (test - val.mean()) / val.std()


def all_scores(saved: dict) -> dict[str, torch.Tensor]:
    """The model's own scores, plus sums of standardised pairs (validation mean and std) to compare."""
    test, val = scores_of(saved["test"]), scores_of(saved["val"])
    scores = dict(test)
    pairs = [("loss", "latent_kl"), ("loss", "latent_distance"), ("loss", "knn"), ("distance", "knn")]
    pairs += [("dirichlet", "knn"), ("knn", "pixel_knn"), ("dirichlet", "pixel_knn")]
    for a, b in pairs:
        if a in test and b in test:
            scores[f"{a}+{b} (val z)"] = standardised(test[a], val[a]) + standardised(test[b], val[b])
    return scores


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["recommended", "geotrans", "deep_svdd", "ae", "vae"])
    parser.add_argument("--digits", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--reuse", action="store_true", help="use saved predictions where present")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "anomaly"))
    parser.add_argument("overrides", nargs="*", help="more CLI arguments for every run")
    args = parser.parse_args(argv)
    for model in args.models:
        if not config_of(model).is_file():
            sys.exit(f"no config {config_of(model)} for --models {model}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = real_mnist_root()

    tables: dict[str, dict[int, dict[str, float]]] = {}
    cpu: dict[str, list[float]] = {}
    for model in args.models:
        tables[model], cpu[model] = {}, []
        for digit in args.digits:
            path = out / f"{model}_{digit}.pt"
            if args.reuse and path.is_file():
                saved = torch.load(path)
            else:
                saved = train_and_predict(model, digit, data_root, out, args.overrides)
                torch.save(saved, path)
            cpu[model].append(saved["cpu_seconds"])
            anomalous = saved["test"]["label"] != digit
            tables[model][digit] = {name: auroc(score, anomalous) for name, score in all_scores(saved).items()}
            print(f"{model} digit {digit}: " + json.dumps({k: round(v, 4) for k, v in tables[model][digit].items()}))

    n_test = len(saved["test"]["label"])
    print(f"\n== One-class MNIST, AUROC on all {n_test} test digits, {time.strftime('%Y-%m-%d')}, {machine()}")
    print(f"torch threads: {torch.get_num_threads()}; CPU min: fit + scoring the test split, per digit (mean)")
    digits = args.digits
    print("| method: score | " + " | ".join(str(d) for d in digits) + " | mean | worst | CPU min |")
    print("| --- |" + " ---: |" * (len(digits) + 3))
    for model, table in tables.items():
        minutes = sum(cpu[model]) / len(cpu[model]) / 60
        for name in table[digits[0]]:
            values = [table[d][name] for d in digits]
            cells = " | ".join(f"{v:.3f}" for v in values)
            mean = sum(values) / len(values)
            print(f"| {model}: {name} | {cells} | **{mean:.3f}** | {min(values):.3f} | {minutes:.1f} |")
    print("\nPublished, same protocol (mean over the 10 digits):")
    for name, value in LITERATURE:
        print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
    main_()
