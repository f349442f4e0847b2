"""One-class anomaly detection on real MNIST, the standard protocol (Ruff et al. 2018): each digit in
turn is the normal class, the model is trained on that digit's training images only
(configs/mnist_anomaly_{ae,vae}.yaml), and every anomaly score is ranked against the labels of all
10,000 official test digits (anomaly = any other digit). Prints the AUROC of each score per digit
and the mean over the 10 digits.

    python benchmarks/anomaly_mnist.py [--models ae vae] [--digits 0 1 ... 9] [--reuse] [-- CLI args]

Predictions (test and validation split) are kept under benchmarks/out/anomaly/, so --reuse
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

ROOT = Path(__file__).resolve().parents[1]


def cli(subcommand: str, args: list[str]) -> None:
    sys.argv = ["train.py"]
    main([subcommand, *args])


def train_and_predict(model: str, digit: int, data_root: str, out: Path, overrides: list[str]) -> dict:
    """Fit on one digit, then predict the validation split (normal digits) and the test split."""
    experiment = f"anomaly_{model}_{digit}"
    common = [
        "--config", str(ROOT / "configs" / f"mnist_anomaly_{model}.yaml"),
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
    run = max((out / "runs" / experiment).glob("*/summary.json"), key=lambda p: p.stat().st_mtime).parent
    saved = {}
    for split in ("val", "test"):
        cli("predict", [*common, "--ckpt_path=best", f"--data.predict_split={split}"])
        saved[split] = torch.load(run / "predict" / "predictions.pt")
    saved["cpu_seconds"] = time.process_time() - started
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
    if "latent_kl" in test:
        scores["loss+latent_kl (val z)"] = standardised(test["loss"], val["loss"]) + standardised(
            test["latent_kl"], val["latent_kl"]
        )
    scores["loss+latent_distance (val z)"] = standardised(test["loss"], val["loss"]) + standardised(
        test["latent_distance"], val["latent_distance"]
    )
    return scores


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ae", "vae"], choices=["ae", "vae"])
    parser.add_argument("--digits", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--reuse", action="store_true", help="use saved predictions where present")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "anomaly"))
    parser.add_argument("overrides", nargs="*", help="more CLI arguments for every run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = real_mnist_root()

    tables: dict[str, dict[int, dict[str, float]]] = {}
    cpu: dict[str, float] = {}
    for model in args.models:
        tables[model] = {}
        for digit in args.digits:
            path = out / f"{model}_{digit}.pt"
            if args.reuse and path.is_file():
                saved = torch.load(path)
            else:
                saved = train_and_predict(model, digit, data_root, out, args.overrides)
                torch.save(saved, path)
            cpu[model] = cpu.get(model, 0.0) + saved["cpu_seconds"]
            anomalous = saved["test"]["label"] != digit
            tables[model][digit] = {name: auroc(score, anomalous) for name, score in all_scores(saved).items()}
            print(f"{model} digit {digit}: " + json.dumps({k: round(v, 4) for k, v in tables[model][digit].items()}))

    n_test = len(saved["test"]["label"])
    print(f"\n== One-class MNIST, AUROC on all {n_test} test digits ({machine()})")
    for model, table in tables.items():
        names = list(next(iter(table.values())))
        print(f"\n{model.upper()} (configs/mnist_anomaly_{model}.yaml), {cpu[model] / 60:.1f} CPU min in all")
        print("| score | " + " | ".join(str(d) for d in table) + " | mean |")
        print("| --- |" + " --- |" * (len(table) + 1))
        for name in names:
            values = [table[d][name] for d in table]
            cells = " | ".join(f"{v:.3f}" for v in values)
            print(f"| {name} | {cells} | **{sum(values) / len(values):.3f}** |")


if __name__ == "__main__":
    main_()
