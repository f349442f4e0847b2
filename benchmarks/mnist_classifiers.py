"""Test accuracy on real MNIST of the shipped classifier configs: trained on the 50,000 shared training
digits (45,000 train / 5,000 validation), tested with the best-validation checkpoint on the official
10,000 test digits.

    python benchmarks/mnist_classifiers.py [--epochs 10] [--only cnn,mlp,lenet5]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _shared_data import machine, real_mnist_root

from cnnlab.cli import CnnlabCLI
from cnnlab.records import read_summary

RUNS = {
    "cnn": ["--config=configs/mnist_classifier.yaml"],
    "mlp": ["--config=configs/mnist_mlp.yaml"],
    "lenet5": ["--config=configs/mnist_classifier.yaml", "--model.backbone=lenet5", "--experiment=mnist_lenet5"],
}


def run(name: str, root: str, epochs: int, out: Path) -> dict:
    args = [
        *RUNS[name],
        "--config=configs/logger/csv.yaml",
        f"--data.data_dir={root}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
    ]
    sys.argv = ["train.py"]
    start = time.perf_counter()
    fit = CnnlabCLI(args=["fit", *args])
    fit_seconds = time.perf_counter() - start
    test = CnnlabCLI(args=["test", *args, f"--ckpt_path={fit.trainer.checkpoint_callback.best_model_path}"])
    summary = read_summary(fit.run_dir)  # the fit's record: best validation score
    evaluation = read_summary(test.output_dir)  # the test's own record: <run>/evaluations/<time>-test/
    return {
        "name": name,
        "epochs": epochs,
        "test_acc": evaluation["metrics"]["test/acc"],
        "test_loss": evaluation["metrics"]["test/loss"],
        "best_val_acc": summary["best_score"],
        "fit_minutes": fit_seconds / 60,
        "run_dir": str(fit.run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", default="cnn,mlp,lenet5")
    args = parser.parse_args()
    root, out = real_mnist_root(), Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    results = [run(name, root, args.epochs, out) for name in args.only.split(",")]
    print(f"machine: {machine()}")
    print("| model | epochs | test accuracy | test error | best val accuracy | fit minutes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['name']} | {r['epochs']} | {100 * r['test_acc']:.2f}% | {100 * (1 - r['test_acc']):.2f}% "
            f"| {100 * r['best_val_acc']:.2f}% | {r['fit_minutes']:.1f} |"
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
