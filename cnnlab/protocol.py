"""The contract between cnnlab's parts: what a model and a DataModule provide, and what callbacks, the
launcher and the CLI may rely on. Nothing else: a callback never reaches into a model's modules or a
DataModule's lifecycle, and a model never reaches into the trainer or the DataModule except through
`ImageData` (a model that fits to the normal training images reads them with
`CnnlabModule.training_images`).

Read this file to know what a new model must provide to get every figure (docs/design.md has the
recipes). Each capability is a runtime-checkable `typing.Protocol`; callbacks call `require` once at
setup and stop with one paragraph naming what is missing.

Data flows one way: DataModule -> LightningModule -> callbacks -> loggers and files.
"""

import inspect
from collections.abc import Sequence
from typing import Literal, Protocol, TypedDict, runtime_checkable

import torch
from torch import nn

from cnnlab.errors import CnnlabError

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets): images and labels, masks or clean images


# -- model side ------------------------------------------------------------------------------------


@runtime_checkable
class PerSampleLoss(Protocol):
    """Every cnnlab LightningModule."""

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        """The loss of each sample of a model-ready batch, unreduced, float32: [B]."""
        ...


class EvalOutput(TypedDict, total=False):
    """What `validation_step` and `test_step` return, so callbacks never run a second forward pass.

    loss: the batch's loss (a scalar). scores: per-sample scores of this batch, float32 [B] each,
    larger = worse or more anomalous, the same names for every batch (`{"loss": per_sample_loss}`
    at least; an anomaly model's `anomaly_scores`). prediction: a dense predictor's per-pixel output
    for the batch, as `DensePredictor` describes.
    """

    loss: torch.Tensor
    scores: dict[str, torch.Tensor]
    prediction: dict[str, torch.Tensor]


@runtime_checkable
class EvaluationScores(Protocol):
    """Every cnnlab LightningModule: its evaluation steps return an `EvalOutput`, and it keeps the
    scores of the last validation with its weights (in the checkpoint), the yardstick of thresholds."""

    def reference_scores(self) -> dict[str, torch.Tensor]:
        """Each score of every validation sample at the last validation, float32 [N] each (all ranks,
        each sample once); {} before the first validation. In an anomaly run validation holds normal
        samples only, so these describe normal data."""
        ...


@runtime_checkable
class LatentModel(Protocol):
    """Models with a latent space (AutoEncoder, VAE): latent scatter, interpolation, reconstructions."""

    latent_dim: int

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The code of each model-ready image: [B, latent_dim] (the VAE: the posterior mean)."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in the model's data range from codes [B, latent_dim]."""
        ...


@runtime_checkable
class GenerativeModel(Protocol):
    """Models with a prior to sample from (VAE): sample grids."""

    def sample(self, n: int) -> torch.Tensor:
        """n images [n, C, H, W] in the model's data range, drawn from the prior with torch's RNG."""
        ...


@runtime_checkable
class AnomalyModel(Protocol):
    """Models that score how anomalous a sample is (AE, VAE, Deep SVDD, transformation model)."""

    primary_score: str  # the score reported as `<stage>/auroc` and drawn first

    def anomaly_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-sample scores of a model-ready batch, float32 [B] each, larger = more anomalous;
        `"loss"` is `per_sample_loss`."""
        ...


@runtime_checkable
class FeatureMaps(Protocol):
    """Models whose first convolution is drawn (kernels and feature maps)."""

    def feature_layer(self) -> nn.Conv2d:
        """The convolution whose kernels and feature maps are drawn: the network's input layer.
        Its input and output are caught while the model computes `per_sample_loss`."""
        ...


@runtime_checkable
class DensePredictor(Protocol):
    """Per-pixel models (UNet). `predict_step` and the `prediction` of `EvalOutput` hold, for
    `task == "segmentation"`, `mask` and `target` (uint8 [B, H, W]) and `miou` [B]; for
    `task == "denoise"`, `denoised` (uint8 [B, C, H, W]) and `psnr`, `psnr_noisy` [B] in dB."""

    task: Literal["segmentation", "denoise"]
    num_classes: int


# -- DataModule side --------------------------------------------------------------------------------


@runtime_checkable
class ImageData(Protocol):
    """Every cnnlab DataModule. Batches are (images, targets); images reach the model normalised and
    (in training) augmented on its device, in `on_after_batch_transfer`."""

    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    normal_classes: list[int] | None  # anomaly runs: train/val hold only these; test holds all

    def is_anomaly(self, labels: torch.Tensor) -> torch.Tensor:
        """True where a label is not a normal class (all False without normal_classes)."""
        ...

    def samples(self, split: str) -> Batch:
        """The whole loaded split ('train', 'val' or 'test') as stored: uint8 images [N, C, H, W]
        and targets [N]. Raises CnnlabError for a split this run did not load."""
        ...

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """Stored uint8 images -> what the model is fed at evaluation (on the images' device,
        normalised, never augmented)."""
        ...

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space images -> [0, 1] for display."""
        ...


# -- the checks --------------------------------------------------------------------------------------


def check_pairing(model: object, data: object) -> None:
    """What a model needs of the data that only the pair can tell: a model whose loss is a likelihood
    of pixels in [0, 1] (`needs_unit_pixels`, BCE) cannot train on standardised pixels."""
    if getattr(model, "needs_unit_pixels", False) and getattr(data, "normalize", False):
        raise CnnlabError(
            f"{type(model).__name__} uses a Bernoulli likelihood (reconstruction_loss 'bce') whose targets must be "
            f"pixels in [0, 1], but {type(data).__name__} standardises them (data.normalize is true). Set "
            "--data.normalize false (as configs/mnist_ae.yaml and mnist_vae.yaml do), or use "
            "--model.reconstruction_loss mse for standardised data."
        )


def missing(obj: object, capability: type) -> list[str]:
    """The attributes of `capability` that `obj` lacks (methods must be callable)."""
    names = [n for n in inspect.get_annotations(capability) if not n.startswith("_")]
    names += [n for n, v in vars(capability).items() if callable(v) and not n.startswith("_")]
    absent = []
    for name in dict.fromkeys(names):
        if not hasattr(obj, name) or (callable(vars(capability).get(name)) and not callable(getattr(obj, name))):
            absent.append(name)
    return absent


def require(obj: object, capabilities: Sequence[type], who: str, what: str) -> None:
    """Raise CnnlabError, one paragraph, when `obj` lacks any of `capabilities`."""
    gaps = [(cap.__name__, name) for cap in capabilities for name in missing(obj, cap)]
    if gaps:
        names = ", ".join(f"{name} ({cap})" for cap, name in gaps)
        raise CnnlabError(
            f"{who} needs {what}, but {type(obj).__name__} has no {names}. See cnnlab/protocol.py for what "
            f"each means; use {who} with an object that provides them, or remove {who} from the config "
            "(trainer.callbacks)."
        )
