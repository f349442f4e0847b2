"""DataModules: one per dataset, on a shared in-memory base."""

from datamodules.base import ImageDataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.mnist import MNISTDataModule
from datamodules.mnist_scenes import MNISTScenesDataModule

__all__ = ["CIFAR10DataModule", "ImageDataModule", "MNISTDataModule", "MNISTScenesDataModule"]
