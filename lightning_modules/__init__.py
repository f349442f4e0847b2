"""LightningModules: one per file, each training a network from networks/."""

from lightning_modules.classifier import ImageClassifier
from lightning_modules.unet import UNetModule

__all__ = ["ImageClassifier", "UNetModule"]
