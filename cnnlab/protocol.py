"""The contract between cnnlab's parts: what a model and a DataModule provide, and what callbacks, the
launcher and the CLI may rely on. Nothing else: a callback never reaches into a model's modules or a
DataModule's lifecycle, and a model never reaches into the trainer or the DataModule except through
`ImageData` (a model that fits to the normal training images reads them with
`CnnlabModule.training_images`).

Read this file to know what a new model must provide to get every figure (docs/design.md has the
recipes). Each capability is a runtime-checkable `typing.Protocol`; the CLI checks a run's model,
DataModule and callbacks against each other once, before anything is written
(`check_configuration`), and each figure callback checks its own needs again at setup (a plain
Trainer has no CLI). A gap stops the run with one paragraph naming the class and what it lacks.

Data flows one way: DataModule -> LightningModule -> callbacks -> loggers and files.
"""

import inspect
from collections.abc import Iterable, Sequence
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
    at least; an anomaly model's `anomaly_scores`).
    """

    loss: torch.Tensor
    scores: dict[str, torch.Tensor]


@runtime_checkable
class EvaluationScores(Protocol):
    """Every cnnlab LightningModule: its evaluation steps return an `EvalOutput`, and it keeps the
    scores of the last validation with its weights (in the checkpoint); in an anomaly run (data with
    `normal_classes`) it computes the anomaly metrics of every score itself (lightning_modules/base.py).

    Optional (absent means none; LossHistogram then draws no threshold and no AUROC): `anomaly_thresholds`,
    {score: the best-F1 threshold of the last validation}, kept in the checkpoint, and `anomaly_results`,
    {stage: the anomaly metrics its last epoch logged}; CnnlabModule has both."""

    def reference_scores(self) -> dict[str, torch.Tensor]:
        """Each score of every validation sample at the last validation, float32 [N] each (all ranks,
        each sample once); {} before the first validation. In an anomaly run validation holds normal
        and anomalous samples (held-out training images of every class)."""
        ...


@runtime_checkable
class Predictions(Protocol):
    """Every cnnlab LightningModule (`CnnlabModule` has a default): `predict_step` returns a dict of
    tensors whose first dimension is the batch's, which PredictionWriter writes as they come and merges
    in dataset order into predictions.pt (every tensor) and predictions.csv ([B] tensors one column
    each, [B, K] tensors K columns `<key>_<k>`); a uint8 `mask` [B, H, W] is also written one PNG per
    sample. The names in use: `label` (class labels, where targets are labels), `score_<name>` (each
    per-sample score, float32 [B]: `score_loss` is `per_sample_loss`, an AnomalyModel's are its
    `anomaly_scores`), `probs` and `pred` (a classifier's class probabilities [B, K] and argmax [B]),
    `latent` (a LatentModel's codes [B, D]), and the dense keys of `DensePredictor`."""

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]: ...


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
    """Models that score how anomalous a sample is (AE, VAE, Deep SVDD, transformation model).

    A model with `anomaly_scores` is held to all of this class: the CLI refuses one that lacks a member,
    or whose `primary_score` is not among its `score_names()`, before the run starts (rather than at
    its first validation)."""

    primary_score: str  # one of score_names(): reported as `<stage>/auroc` and drawn first

    def anomaly_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-sample scores of a model-ready batch, float32 [B] each, larger = more anomalous;
        `"loss"` is `per_sample_loss`. Its evaluation steps return the same scores (`EvalOutput`)."""
        ...

    def score_names(self) -> tuple[str, ...]:
        """Every name `anomaly_scores` returns once the model's fits are made (a k-NN score appears
        when its bank of training codes is fitted), as the model's settings decide it."""
        ...


@runtime_checkable
class FeatureMaps(Protocol):
    """Models whose first convolution is drawn (kernels and feature maps)."""

    def feature_layer(self) -> nn.Conv2d | None:
        """The convolution whose kernels and feature maps are drawn: the network's input layer (None for
        a network without one, an MLP). Its input and output are caught while the model computes
        `per_sample_loss`."""
        ...


@runtime_checkable
class DensePredictor(Protocol):
    """Per-pixel models (UNet). `predict_step` holds, for `task == "segmentation"`, `mask` and
    `target` (uint8 [B, H, W]) and `miou` [B]; for `task == "denoise"`, `denoised` (uint8
    [B, C, H, W]) and `psnr`, `psnr_noisy` [B] in dB. DensePredictionGrid draws those keys and
    PredictionWriter colours masks with `num_classes` colours."""

    task: Literal["segmentation", "denoise"]
    num_classes: int


@runtime_checkable
class UnitPixelLikelihood(Protocol):
    """Optional (absent means False): a model whose loss is a likelihood of pixels in [0, 1] (a
    Bernoulli decoder, BCE) says so, and the CLI refuses to pair it with a DataModule that
    standardises pixels (`StandardisedPixels`): its targets would leave [0, 1]."""

    needs_unit_pixels: bool


# -- networks ---------------------------------------------------------------------------------------


@runtime_checkable
class FeaturesAndHead(Protocol):
    """A classifier network of networks/classifiers.py that a model splits in two (GeoTrans: the
    features are its k-NN features, the head tells the transformations apart): `head(features(x))`
    is its forward pass. The MLP has no features; a model that needs them refuses it."""

    features: nn.Module  # images [B, C, H, W] -> feature maps (flattened to [B, F] by the user)
    head: nn.Module  # feature maps -> logits [B, num_classes]

    def input_layer(self) -> nn.Conv2d | None:
        """The first convolution (what `FeatureMaps.feature_layer` returns), or None."""
        ...


# -- DataModule side --------------------------------------------------------------------------------


@runtime_checkable
class ImageData(Protocol):
    """Every cnnlab DataModule. Batches are (images, targets); images reach the model normalised and
    (in training) augmented on its device, in `on_after_batch_transfer`."""

    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    normal_classes: list[int] | None  # anomaly runs: train holds only these; val and test hold every class

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


@runtime_checkable
class StandardisedPixels(Protocol):
    """Optional (absent means False): a DataModule that standardises pixels with the dataset's mean
    and std says so (`data.normalize`); with False, images reach the model in [0, 1]."""

    normalize: bool


# -- callback side ----------------------------------------------------------------------------------


@runtime_checkable
class CallbackNeeds(Protocol):
    """What a callback declares it needs, as class attributes (every one optional; FigureCallback
    sets the first three): `check_callback` checks them against the run's model and DataModule."""

    requires: Sequence[type]  # protocol classes of this file the model must satisfy
    what: str  # the same in a user's words ("a model with a latent space"), for the error
    needs_data: bool  # reads stored samples or class names of the DataModule: `ImageData`
    draws_at_predict: bool  # a `predict` with it has a picture for the loggers (else W&B is left out)


# -- what the seed launcher and the reports read ------------------------------------------------------
#
# Metrics: a model logs `<stage>/<name>` with stage train, val or test, and `val/loss` at every
# validation (the checkpoint's default monitor, `checkpoint.monitor` in cnnlab/cli.py; a config may
# monitor another, e.g. `val/acc`). A record keeps the values whose prefix its command owns
# (`cnnlab.records.METRIC_PREFIXES`: fit train/ and val/, validate val/, test test/, predict none), so a
# metric named otherwise reaches no summary.json, no seed report and no comparison. `cnnlab-seeds
# report` shows val/loss, val/acc, test/loss and test/acc by default (any logged name with --metrics);
# `compare` decides on test/acc where present; an anomaly run's model logs `<stage>/auroc` (lightning_modules/base.py).
#
# A run's summary.json fields that cnnlab-seeds reads (cnnlab.seeds.registry.outcome_of, is_complete):
# seed, status, metrics, run_dir, best_checkpoint, last_checkpoint, monitor, mode, best_score,
# data_seed, git_commit, fit_seconds, wandb.id and wandb.project, and per evaluation in `evaluations`:
# subcommand, status, checkpoint.path, metrics and seconds (the test of the best checkpoint).


# -- the checks --------------------------------------------------------------------------------------


def check_pairing(model: object, data: object) -> None:
    """What a model needs of the data that only the pair can tell: a model whose loss is a likelihood
    of pixels in [0, 1] (`UnitPixelLikelihood`, BCE) cannot train on standardised pixels
    (`StandardisedPixels`)."""
    if getattr(model, "needs_unit_pixels", False) and getattr(data, "normalize", False):
        raise CnnlabError(
            f"{type(model).__name__} uses a Bernoulli likelihood (reconstruction_loss 'bce') whose targets must be "
            f"pixels in [0, 1], but {type(data).__name__} standardises them (data.normalize is true). Set "
            "--data.normalize false (as configs/mnist_ae.yaml and mnist_vae.yaml do), or use "
            "--model.reconstruction_loss mse for standardised data."
        )


def check_callback(callback: object, model: object, data: object) -> None:
    """What `callback` declares it needs (`CallbackNeeds`), checked against the run's model and DataModule."""
    who = type(callback).__name__
    require(model, getattr(callback, "requires", ()), who, getattr(callback, "what", "the methods listed"))
    if getattr(callback, "needs_data", False):
        require(data, (ImageData,), who, "a cnnlab DataModule (images, class names, display)")


def check_scores(model: object) -> None:
    """A model with `anomaly_scores` is an `AnomalyModel` in full, and its primary score is one it has."""
    if not callable(getattr(model, "anomaly_scores", None)):
        return
    name = type(model).__name__
    absent = missing(model, AnomalyModel)
    if absent:
        raise CnnlabError(
            f"{name} has anomaly_scores but no {', '.join(absent)} (AnomalyModel in cnnlab/protocol.py): the "
            "anomaly report needs the names of its scores (score_names) and which one is primary "
            "(primary_score). Add them to the model."
        )
    names = tuple(model.score_names())
    if model.primary_score not in names:
        raise CnnlabError(
            f"{name}.primary_score is '{model.primary_score}', but its anomaly scores are {list(names)} "
            f"({name}.score_names() with these settings), so the run would fail at its first validation. Make "
            "primary_score one of them, or change the settings that turned that score off (e.g. knn_k 0)."
        )


def check_configuration(model: object, data: object, callbacks: Iterable[object] = ()) -> None:
    """Everything a run's parts need of each other that can be told before it starts: the model and
    DataModule as a pair (`check_pairing`), each callback's declared needs (`check_callback`) and the
    model's scores (`check_scores`). Raises CnnlabError, one paragraph naming the class and what it
    lacks. The CLI calls it once, after the classes are built and before anything is written."""
    check_pairing(model, data)
    check_scores(model)
    for callback in callbacks:
        check_callback(callback, model, data)


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
