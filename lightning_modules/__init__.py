"""LightningModules: one per file, each training a network from networks/."""

from lightning_modules.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
