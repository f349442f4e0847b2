"""LightningModules: one per file, each training a network from networks/."""

from lightning_modules.autoencoder import AutoEncoder
from lightning_modules.classifier import ImageClassifier
from lightning_modules.unet import UNetModule
from lightning_modules.vae import VAE

__all__ = ["VAE", "AutoEncoder", "ImageClassifier", "UNetModule"]
