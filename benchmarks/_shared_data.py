"""The real MNIST of ../shared/data/mnist in torchvision's layout, for benchmarks (read-only source:
the .gz files are linked into a temporary root; cnnlab unpacks them there). CNNLAB_MNIST_DIR names
another folder holding the same four .gz files (a copy carried to a GPU machine, say)."""

import os
import sys
import tempfile
from pathlib import Path

SHARED_MNIST = Path(
    os.environ.get("CNNLAB_MNIST_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
)


def real_mnist_root() -> str:
    if not SHARED_MNIST.is_dir():
        sys.exit(f"skipped: real MNIST not found at {SHARED_MNIST}")
    root = Path(tempfile.mkdtemp(prefix="cnnlab-mnist-"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in SHARED_MNIST.glob("*.gz"):
        (raw / gz.name).symlink_to(gz)
    return str(root)


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}"
