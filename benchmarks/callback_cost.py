"""What the figure callbacks cost on real MNIST: seconds per call of each callback hook during a real
fit and test, next to the training epoch they ride on. Optionally copies the figures into docs/.

Part 1: configs/mnist_classifier.yaml as it ships (FilterAndFeatureMaps, LossHistogram), fit + test.
LossHistogram runs no model of its own: it keeps the per-sample scores the validation and test steps
return and draws at the epoch's end, so its hooks' times are that bookkeeping and the drawing.
Part 2: configs/mnist_ae.yaml (the AutoEncoder with LatentSpaceScatter and LatentInterpolationGIF,
here every epoch), fit + test; plus one t-SNE scatter of the same codes.

    python benchmarks/callback_cost.py [--epochs 2] [--ae-epochs 3] [--docs docs/figures]
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _shared_data import machine, real_mnist_root
from lightning.pytorch import Callback

from callbacks import FilterAndFeatureMaps, LatentInterpolationGIF, LatentSpaceScatter, LossHistogram
from cnnlab.cli import CnnlabCLI

HOOKS = (
    "on_train_start",
    "on_train_epoch_end",
    "on_validation_start",
    "on_validation_epoch_start",
    "on_validation_batch_end",
    "on_validation_epoch_end",
    "on_test_start",
    "on_test_epoch_start",
    "on_test_batch_end",
    "on_test_epoch_end",
    "on_test_end",
    "on_fit_end",
)
FIGURE_CALLBACKS = (FilterAndFeatureMaps, LatentInterpolationGIF, LatentSpaceScatter, LossHistogram)


class EpochTimer(Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def time_hooks(callbacks, totals: dict) -> None:
    """Wrap each hook a figure callback overrides with a timer (Lightning looks hooks up on the instance)."""
    for callback in callbacks:
        if not isinstance(callback, FIGURE_CALLBACKS):
            continue
        for hook in HOOKS:
            if not any(hook in vars(cls) for cls in type(callback).__mro__ if cls is not Callback):
                continue
            original, key = getattr(callback, hook), (type(callback).__name__, hook)

            def timed(*args, _original=original, _key=key, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    totals[_key].append(time.perf_counter() - start)

            setattr(callback, hook, timed)


def report(title: str, totals: dict, epochs: list[float]) -> None:
    print(f"\n{title}: training epoch {statistics.mean(epochs):.1f} s (mean of {len(epochs)})")
    print(f"{'callback':24} {'hook':26} {'calls':>6} {'s/call':>8} {'total s':>8}")
    for (name, hook), seconds in sorted(totals.items()):
        print(f"{name:24} {hook:26} {len(seconds):6d} {statistics.mean(seconds):8.3f} {sum(seconds):8.2f}")
    per_callback = defaultdict(float)
    for (name, _), seconds in totals.items():
        per_callback[name] += sum(seconds)
    for name, seconds in per_callback.items():
        print(f"{name:24} all hooks, whole run: {seconds:.2f} s")


def fit_and_test(config: str, root: str, epochs: int, out: Path, every_epoch: tuple = ()) -> tuple[CnnlabCLI, dict]:
    """Fit and test a shipped config with the figure callbacks' hooks timed; `every_epoch`: callback
    types to switch to every epoch (as a user watching them would)."""
    sys.argv = ["train.py"]
    cli = CnnlabCLI(
        args=[
            f"--config=configs/{config}",
            "--config=configs/logger/csv.yaml",
            f"--data.data_dir={root}",
            f"--trainer.max_epochs={epochs}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={out}",
        ],
        run=False,
    )
    for callback in cli.trainer.callbacks:
        if isinstance(callback, every_epoch):
            callback.every_n_epochs = 1
    totals: dict = defaultdict(list)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    time_hooks(cli.trainer.callbacks, totals)
    cli.trainer.fit(cli.model, cli.datamodule)
    cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    metrics = {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    report(f"{config}, {epochs} epochs, test {metrics}", totals, timer.seconds)
    return cli, metrics


def classifier_part(root: str, epochs: int, out: Path) -> Path:
    cli, _ = fit_and_test("mnist_classifier.yaml", root, epochs, out)
    return Path(cli.trainer.default_root_dir)


def autoencoder_part(root: str, epochs: int, out: Path) -> Path:
    latent = (LatentSpaceScatter, LatentInterpolationGIF)
    cli, _ = fit_and_test("mnist_ae.yaml", root, epochs, out, every_epoch=latent)
    tsne = LatentSpaceScatter(projection="tsne")
    start = time.perf_counter()
    tsne.draw(cli.trainer, cli.model, "val", tag="tsne", title=f"end of epoch {epochs - 1}")
    print(f"LatentSpaceScatter(projection='tsne'), 1000 codes: {time.perf_counter() - start:.1f} s per call")
    return Path(cli.trainer.default_root_dir)


def copy_figures(classifier: Path, autoencoder: Path, docs: Path) -> None:
    def last(folder: Path, pattern: str = "epoch*") -> Path:
        return sorted(folder.glob(pattern))[-1]

    figures = {
        "sobel.png": classifier / "figures/filters_sobel/sobel.png",
        "random_kernels.png": classifier / "figures/filters_random_kernels/random-kernels.png",
        "first_conv_trained.png": last(classifier / "figures/filters_first_conv", "epoch*.png"),
        "classifier_loss_histogram.png": last(classifier / "figures/test_loss_histogram", "*.png"),
        "classifier_extremes.png": last(classifier / "figures/test_extremes", "*.png"),
        "latent_scatter_before.png": autoencoder / "figures/latent_scatter/before-training.png",
        "latent_scatter_after.png": last(autoencoder / "figures/latent_scatter", "epoch*.png"),
        "latent_scatter_tsne.png": autoencoder / "figures/latent_scatter/tsne.png",
        "interpolation_strip.png": last(autoencoder / "figures/latent_interpolation_strip", "epoch*.png"),
        "interpolation.gif": last(autoencoder / "figures/latent_interpolation", "epoch*.gif"),
    }
    docs.mkdir(parents=True, exist_ok=True)
    for name, source in figures.items():
        shutil.copyfile(source, docs / name)
        print(f"{docs / name}: {(docs / name).stat().st_size / 1024:.0f} KB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2, help="classifier epochs")
    parser.add_argument("--ae-epochs", type=int, default=3, help="autoencoder epochs")
    parser.add_argument("--docs", type=Path, default=None, help="copy the figures here")
    args = parser.parse_args()
    print(machine())
    root = real_mnist_root()
    out = Path(tempfile.mkdtemp(prefix="cnnlab-callback-cost-"))
    classifier = classifier_part(root, args.epochs, out / "classifier")
    autoencoder = autoencoder_part(root, args.ae_epochs, out / "autoencoder")
    if args.docs:
        copy_figures(classifier, autoencoder, args.docs)


if __name__ == "__main__":
    main()
