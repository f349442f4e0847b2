"""Callbacks: one per file; they talk to models only through DESIGN.md's protocol."""

from callbacks.dense_prediction_grid import DensePredictionGrid
from callbacks.nonfinite_loss import NonFiniteLossGuard
from callbacks.prediction_writer import PredictionWriter
from callbacks.schedule_guard import ScheduleLengthGuard

__all__ = ["DensePredictionGrid", "NonFiniteLossGuard", "PredictionWriter", "ScheduleLengthGuard"]
