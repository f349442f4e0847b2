"""LightningModules: one per file, each training a network from networks/."""

from lightning_modules.autoencoder import AutoEncoder
from lightning_modules.classifier import ImageClassifier
from lightning_modules.deep_svdd import DeepSVDD
from lightning_modules.geotrans import GeoTrans
from lightning_modules.unet import UNetModule
from lightning_modules.vae import VAE

__all__ = ["VAE", "AutoEncoder", "DeepSVDD", "GeoTrans", "ImageClassifier", "UNetModule"]
