"""Callbacks: one per file; they talk to models only through DESIGN.md's protocol."""

from callbacks.nonfinite_loss import NonFiniteLossGuard
from callbacks.prediction_writer import PredictionWriter
from callbacks.reconstruction_grid import ReconstructionGrid
from callbacks.sample_grid import SampleGrid
from callbacks.schedule_guard import ScheduleLengthGuard

__all__ = ["NonFiniteLossGuard", "PredictionWriter", "ReconstructionGrid", "SampleGrid", "ScheduleLengthGuard"]
