"""Callbacks: one per file; they talk to models only through cnnlab/protocol.py (docs/design.md)."""

from callbacks.dense_prediction_grid import DensePredictionGrid
from callbacks.filters_and_feature_maps import FilterAndFeatureMaps
from callbacks.last_checkpoint import RunCheckpoint
from callbacks.latent_interpolation import LatentInterpolationGIF
from callbacks.latent_scatter import LatentSpaceScatter
from callbacks.loss_histogram import LossHistogram
from callbacks.nonfinite_loss import NonFiniteLossGuard
from callbacks.prediction_writer import PredictionWriter
from callbacks.reconstruction_grid import ReconstructionGrid
from callbacks.sample_grid import SampleGrid
from callbacks.schedule_guard import ScheduleLengthGuard

__all__ = [
    "DensePredictionGrid",
    "FilterAndFeatureMaps",
    "LatentInterpolationGIF",
    "LatentSpaceScatter",
    "LossHistogram",
    "NonFiniteLossGuard",
    "PredictionWriter",
    "ReconstructionGrid",
    "RunCheckpoint",
    "SampleGrid",
    "ScheduleLengthGuard",
]
