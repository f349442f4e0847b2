"""Shared fixtures: tiny but real datasets in torchvision's on-disk formats, and a tiny CLI config.

The synthetic digits are learnable (each class a bar at its own place and angle, plus noise) and
asymmetric, so training, augmentation and flip checks have something real to bite on.
"""

import gzip
import hashlib
import json
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_TRAIN, MNIST_TEST = 600, 200
CIFAR_PER_BATCH, CIFAR_TEST = 60, 100


def synthetic_images(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images [n, size, size, channels] and labels 0..9: class k is a bright bar whose
    position and slope depend on k, on a noisy background; classes are balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = rng.integers(0, 40, size=(n, size, size, channels)).astype(np.float64)
    for i, k in enumerate(labels):
        centre = 0.2 + 0.06 * k + rng.normal(0, 0.01)
        slope = -0.8 + 0.18 * k
        bar = np.abs((yy - 0.5) - slope * (xx - centre)) < 0.08
        bar &= xx > 0.15  # an asymmetric stroke: nothing is mirror-symmetric
        images[i][bar] += 200
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """MNIST's IDX format: big-endian magic (0x08 = ubyte, then the rank), dims, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def make_mnist(root: Path, n_train: int = MNIST_TRAIN, n_test: int = MNIST_TEST, compress: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_images(n, 28, 1, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[..., 0], compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root


def make_cifar10(root: Path) -> tuple[Path, dict[str, str]]:
    """CIFAR-10's python version: pickled dicts with 'data' [N, 3072] (R, G, B planes) and 'labels'.
    Returns the root and the MD5 of each file (the real checksums cannot match synthetic data)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = CIFAR_TEST if name == "test_batch" else CIFAR_PER_BATCH
        images, labels = synthetic_images(n, 32, 3, seed=10 + i)
        entry = {"data": images.transpose(0, 3, 1, 2).reshape(n, -1), "labels": labels.tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": classes}, handle, protocol=2)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return root, md5


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def _cifar_files(tmp_path_factory):
    return make_cifar10(tmp_path_factory.mktemp("cifar"))


@pytest.fixture
def cifar_root(_cifar_files, monkeypatch) -> Path:
    """Tiny CIFAR-10 on disk; torchvision's MD5 table is pointed at these files for the test."""
    from torchvision.datasets import CIFAR10

    root, md5 = _cifar_files
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return root


@pytest.fixture
def shared_mnist_root(tmp_path_factory) -> Path:
    """The real MNIST of ../shared in torchvision's layout (the .gz files linked in; cnnlab unpacks)."""
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"real MNIST not available at {SHARED_MNIST}")
    root = tmp_path_factory.mktemp("real_mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in SHARED_MNIST.glob("*.gz"):
        (raw / gz.name).symlink_to(gz)
    return root


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny tensors gain nothing from a second one, and on a busy
    machine each op of a multi-threaded step can stall at the OpenMP barrier for a time slice (a
    tiny VAE's forward pass took 10x the CPU time with 2 threads on the busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def only_run(tmp_path, experiment: str = "mnist_classifier"):
    """The one run directory of `experiment` under tmp_path/runs."""
    runs = sorted((tmp_path / "runs" / experiment).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def summary_of(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def last_evaluation(run: Path, subcommand: str) -> Path:
    """The directory of the latest `subcommand` (validate/test/predict) of a run's checkpoints."""
    found = sorted(p for p in (run / "evaluations").glob(f"*-{subcommand}*") if p.is_dir())
    assert found, f"no {subcommand} evaluation under {run}"
    return found[-1]


def tiny_cli_args(config: str, data_root, runs_dir, *extra: str) -> list[str]:
    """CLI arguments that shrink a shipped config: tiny data, one epoch on the CPU, CSV logger, runs
    under `runs_dir`; `extra` last, so it overrides."""
    return [
        "--config", str(ROOT / "configs" / f"{config}.yaml"),
        "--config", str(ROOT / "configs" / "logger" / "csv.yaml"),
        f"--data.data_dir={data_root}",
        "--data.val_size=100",
        "--data.batch_size=50",
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={runs_dir}",
        *extra,
    ]  # fmt: skip


def tiny_seed_overrides(mnist_root) -> list[str]:
    """Overrides that make a seed take a second or two: 2 training steps, 50 validation and test digits."""
    return [
        f"--data.data_dir={mnist_root}",
        "--data.val_size=100",
        "--data.batch_size=50",
        "--data.max_train_samples=100",
        "--data.max_eval_samples=50",
        "--trainer.max_epochs=1",
        "--trainer.enable_model_summary=false",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
    ]


@pytest.fixture
def tiny_args(mnist_root, tmp_path) -> list[str]:
    """A shrunk mnist_classifier.yaml: tiny data, one epoch, CSV logger, runs under tmp_path."""
    return tiny_cli_args("mnist_classifier", mnist_root, tmp_path / "runs")


@pytest.fixture
def run_cli(monkeypatch):
    """Run train.py's main in this process (imports paid once) with the given arguments."""
    from cnnlab.cli import main

    def run(subcommand: str, args: list[str]) -> None:
        monkeypatch.setattr(sys, "argv", ["train.py"])
        torch.manual_seed(0)
        main([subcommand, *args])

    return run


@pytest.fixture
def fresh_wandb(monkeypatch):
    """wandb keeps process-wide settings from its first run (mode, server); tests that change them
    start and end with a clean slate."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()
    yield
    wandb.teardown()
