"""cnnlab's MNIST batch pipeline against torchvision's standard one, at the same batch size.

cnnlab: uint8 tensors in memory, index-slice batches, float conversion + augmentation + normalisation
batched (what on_after_batch_transfer does). torchvision: DataLoader(MNIST(..., transform=ToTensor()))
decoding each image through PIL. Both iterate one full training epoch.

    python benchmarks/data_throughput.py [--batch-size 128]
"""

import argparse
import time

import torch
from _shared_data import machine, real_mnist_root
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST
from torchvision.transforms import Compose, Normalize, RandomAffine, ToTensor

from datamodules import MNISTDataModule


def images_per_second(batches, transform=None) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for images, _ in batches:
        if transform is not None:
            images = transform(images)
        n += len(images)
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    root = real_mnist_root()
    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=root, batch_size=args.batch_size, val_size=5000)
    dm.prepare_data()
    dm.setup("fit")
    rows = []
    rate, n = images_per_second(dm.train_dataloader())
    rows.append(("cnnlab DataModule, uint8 batches (loader only)", rate, n))
    rate, n = images_per_second(dm.train_dataloader(), lambda x: dm.transform(x, train=True))
    rows.append(("cnnlab DataModule + float/augment/normalise (CPU)", rate, n))
    rate, n = images_per_second(dm.train_dataloader(), dm.model_input)
    rows.append(("cnnlab DataModule + float/normalise, no augmentation", rate, n))
    standard = MNIST(root, train=True, download=False, transform=ToTensor())
    for workers in (0, 2):
        loader = DataLoader(standard, batch_size=args.batch_size, shuffle=True, num_workers=workers)
        rate, n = images_per_second(loader)
        rows.append((f"torchvision DataLoader(MNIST, ToTensor), num_workers={workers}", rate, n))
    augmented = MNIST(
        root,
        train=True,
        download=False,
        transform=Compose([RandomAffine(10, translate=(2 / 28, 2 / 28)), ToTensor(), Normalize((0.1307,), (0.3081,))]),
    )
    for workers in (0, 2):
        loader = DataLoader(augmented, batch_size=args.batch_size, shuffle=True, num_workers=workers)
        rate, n = images_per_second(loader)
        rows.append((f"torchvision, the same augmentation per image (RandomAffine), num_workers={workers}", rate, n))
    baseline = rows[3][1]
    print(f"machine: {machine()}; batch size {args.batch_size}")
    print("| pipeline | images/s | vs torchvision (0 workers) |\n| --- | ---: | ---: |")
    for name, rate, _ in rows:
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.1f}x |")


if __name__ == "__main__":
    main()
