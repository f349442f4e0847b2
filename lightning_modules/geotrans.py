"""GeoTrans (Golan & El-Yaniv, "Deep Anomaly Detection Using Geometric Transformations", NeurIPS
2018): a classifier learns which of K geometric transformations (flips, translations, rotations by
90 degrees) was applied to a normal image. On a normal image it can tell; on an image of another kind
its predictions are less sure or wrong, and that is the anomaly score.

Scores (larger = more anomalous), each float32 [B]:
  loss       the cross-entropy of the applied transformation, averaged over all K transformations of
             the image (Golan's "simple" score divided by K; also `per_sample_loss`).
  dirichlet  Golan's score: for each transformation k a Dirichlet distribution alpha_k is fitted to the
             softmax outputs on T_k(x) of normal images; the score is -sum_k (alpha_k - 1) . log p(.|T_k x),
             the negative log-likelihood up to a constant. Before the first fit alpha_k - 1 is the k-th
             unit vector, which makes it the simple score.
  knn        mean cosine distance of the classifier's features of the untransformed image to those of
             its k nearest normal training images (nearest_neighbours.py; Bergman et al. 2020 show that
             features learnt this way suit k-NN).
  pixel_knn  (pixel_knn_k > 0) the same on blurred pixels: no learnt features at all, a strong baseline
             on MNIST, whose digits differ in where their strokes lie.
  combined   the scores named in `combine`, each standardised with its mean and std on normal training
             images, summed: the primary score.

What the scores are measured against is fitted at the start of each validation during fit, to the
weights it validates, and travels in the checkpoint (`validate` and `test` of a checkpoint keep it):
the k-NN banks on the training images (one pass of the untransformed image each; the pixel bank once),
then the Dirichlets and the standardisation of every score (all of them, so a benchmark can combine
any from a checkpoint) on FIT_IMAGES of those training images (all K transformations each). None is
fitted on the validation images: in an anomaly run they hold anomalies, and a fit there would score
them in-sample. A training image is in the k-NN banks, so its own match is left out of its k-NN
scores (`exclude_self`): the standardisation then describes normal images the bank has not seen.
Every rank reads all training images and computes the same fits."""

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from torchvision.transforms.v2.functional import gaussian_blur
from typing_extensions import override

from cnnlab.errors import CnnlabError
from cnnlab.protocol import Batch, EvalOutput, FeaturesAndHead, missing
from lightning_modules.base import CnnlabModule
from lightning_modules.gaussian_fit import GaussianFit
from lightning_modules.nearest_neighbours import NearestNeighbours
from networks.classifiers import Backbone, build_backbone

Translations = Literal["none", "cross", "grid"]
OFFSETS = {"none": ((0, 0),), "cross": ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))}
OFFSETS["grid"] = tuple((dy, dx) for dy in (0, 1, -1) for dx in (0, 1, -1))
SCORES = ("loss", "dirichlet", "knn", "pixel_knn")
# Training images the Dirichlets and the standardisation are fitted on: each costs K forward passes, and
# 500 images estimate K Dirichlets of K parameters (400 at K = 20) and a mean and std per score.
FIT_IMAGES = 500


class GeometricTransformations(nn.Module):
    """K transformations of an image batch: optionally a horizontal flip, then a translation by
    `shift` pixels (none; cross: the 4 axis directions; grid: the 8 neighbours), then a rotation by
    r x 90 degrees, r < rotations. Transformation 0 is the identity. The image is first padded by `pad`
    pixels; padding and the pixels a translation uncovers repeat the border (the background)."""

    def __init__(self, flip: bool, translations: Translations, shift: int, rotations: int, pad: int) -> None:
        super().__init__()
        if translations not in OFFSETS or rotations not in (1, 2, 4) or shift < 0 or pad < 0:
            raise CnnlabError(
                f"GeoTrans transformations: translations {translations!r}, rotations {rotations}, shift {shift}, "
                f"pad {pad}. translations is none, cross or grid; rotations 1, 2 or 4 (multiples of 90 degrees); "
                "shift and pad 0 or more."
            )
        self.pad, self.shift = pad, shift
        self.transforms = [
            (flipped, dy * shift, dx * shift, r)
            for flipped in ((False, True) if flip else (False,))
            for dy, dx in OFFSETS[translations]
            for r in range(rotations)
        ]

    def __len__(self) -> int:
        return len(self.transforms)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return F.pad(images, (self.pad,) * 4, mode="replicate") if self.pad else images

    def apply(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """Transformation k of prepared images [B, C, H, W]."""
        flipped, dy, dx, r = self.transforms[k]
        x = images.flip(-1) if flipped else images
        if dy or dx:
            s, (h, w) = self.shift, x.shape[-2:]
            x = F.pad(x, (s, s, s, s), mode="replicate")[..., s - dy : s - dy + h, s - dx : s - dx + w]
        return torch.rot90(x, r, (-2, -1)) if r else x

    def apply_all(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All K transformations of a batch, transformation-major [K * B, C, H', W'], and which
        transformation each is [K * B]."""
        x = self.prepare(images)
        labels = torch.arange(len(self), device=images.device).repeat_interleave(len(images))
        return torch.cat([self.apply(x, k) for k in range(len(self))]), labels


@torch.no_grad()
def fit_dirichlet(log_probs: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """Maximum-likelihood Dirichlet parameters [K] of probability vectors given as log-probabilities
    [N, K] (Minka 2000, "Estimating a Dirichlet distribution": the fixed point
    psi(alpha_j) = psi(sum alpha) + mean log p_j, psi inverted by Newton's method), in float64."""
    mean_log = log_probs.double().mean(0)
    p = log_probs.double().exp()
    m, m2 = p.mean(0), p.square().mean(0)
    precision = ((m - m2) / (m2 - m.square()).clamp_min(1e-12)).median().clamp_min(1e-2)  # moments: a start
    alpha = (m * precision).clamp_min(1e-3)
    for _ in range(iterations):
        alpha = inverse_digamma(torch.special.digamma(alpha.sum()) + mean_log).clamp_min(1e-6)
    return alpha


def inverse_digamma(y: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """x with digamma(x) = y (Minka's initialisation, then Newton steps)."""
    euler = -torch.special.digamma(torch.ones((), dtype=y.dtype))
    x = torch.where(y >= -2.22, y.exp() + 0.5, -1.0 / (y + euler))
    for _ in range(steps):
        x = x - (torch.special.digamma(x) - y) / torch.special.polygamma(1, x)
    return x


class GeoTrans(CnnlabModule):
    """The transformation classifier for one-class anomaly detection (module docstring).

    Args:
        image_shape: (channels, height, width); linked from the DataModule.
        backbone: The classifier (networks/classifiers.py) that tells the K transformations apart:
            plain, cnn, resnet, lenet5 or alexnet (a backbone with `features`, whose output are the
            k-NN features, and a `head`: FeaturesAndHead in cnnlab/protocol.py). plain (three conv
            stages) scored better than cnn (the SmallCNN, one more conv) at 0.63x its CPU time
            (docs/anomaly.md).
        width: The backbone's width; None keeps its default.
        flip: Include horizontal flips (doubles K).
        translations: none, cross (x5) or grid (x9).
        shift: Translation in pixels.
        rotations: 1, 2 or 4 rotations by 90 degrees.
        pad: Pixels of border added before transforming (MNIST 28 -> 32).
        knn_k: Neighbours of the `knn` score: the features of each training image (untransformed), one
            pass each, refitted at each validation during fit (0: no such score, no bank).
        pixel_knn_k: Neighbours of the `pixel_knn` score: a bank of blurred training images, fitted
            once (0: no such score, no bank).
        pixel_blur: Standard deviation in pixels of the Gaussian blur before pixel_knn (0: none).
        combine: Scores summed, standardised, into `combined` (from loss, dirichlet, knn, pixel_knn). Every
            score's standardisation is fitted and saved whichever are named here.
        optimizer: Optimizer factory (class_path + init_args in YAML).
        lr_scheduler: Scheduler factory; OneCycleLR gets total_steps from the trainer.
    """

    primary_score = "combined"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        backbone: Backbone = "plain",
        width: int | None = 16,
        flip: bool = False,
        translations: Translations = "cross",
        shift: int = 4,
        rotations: int = 4,
        pad: int = 2,
        knn_k: int = 5,
        pixel_knn_k: int = 0,
        pixel_blur: float = 1.0,
        combine: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        self.save_hyperparameters()
        self.transformations = GeometricTransformations(flip, translations, shift, rotations, pad)
        if rotations == 4 and image_shape[1] != image_shape[2]:
            raise CnnlabError(
                f"GeoTrans rotates by 90 degrees, which needs square images, but these are {image_shape[1]}x"
                f"{image_shape[2]}. Use --model.rotations 2 (0 and 180 degrees) or 1."
            )
        side = min(image_shape[1], image_shape[2]) + 2 * pad
        if translations != "none" and shift >= side:
            raise CnnlabError(
                f"GeoTrans: a shift of {shift} pixels moves a {side}-pixel image (padding included) out of its frame "
                "entirely, so the transformations cannot be told apart. Use a shift well below the image size "
                "(the configs use 4 on MNIST's 28 + 2 x 2)."
            )
        if pixel_blur < 0:
            raise CnnlabError(f"GeoTrans: pixel_blur is {pixel_blur}; it is a standard deviation in pixels, 0 or more.")
        k = len(self.transformations)
        self.num_transformations = k
        self.net = build_backbone(backbone, image_shape, k, width, 0.0)
        absent = missing(self.net, FeaturesAndHead)
        if absent:
            raise CnnlabError(
                "GeoTrans splits its backbone into features (for k-NN) and a head (FeaturesAndHead in "
                f"cnnlab/protocol.py), but {backbone} has no {', '.join(absent)}. Use a convolutional backbone: "
                "--model.backbone plain (or cnn, resnet, lenet5, alexnet)."
            )
        self.to(memory_format=torch.channels_last)
        combine = list(combine) if combine is not None else ["dirichlet", "knn"]
        available = ["loss", "dirichlet"] + ["knn"] * bool(knn_k) + ["pixel_knn"] * bool(pixel_knn_k)
        if not combine or set(combine) - set(available):
            raise CnnlabError(
                f"GeoTrans: combine is {combine}, but the scores this model computes are {available} (knn needs "
                "knn_k > 0, pixel_knn needs pixel_knn_k > 0). Name one or more of them."
            )
        self.combine = combine
        self.pixel_blur = pixel_blur
        self.neighbours = NearestNeighbours(knn_k, "cosine") if knn_k else None
        self.pixel_neighbours = NearestNeighbours(pixel_knn_k, "cosine") if pixel_knn_k else None
        # Dirichlet parameters minus one, per transformation [K, K]: the identity is the simple score.
        self.register_buffer("dirichlet_weights", torch.eye(k))
        # Every available score's, not only those in `combine`: a checkpoint can then be recombined.
        self.standardise = nn.ModuleDict({name: GaussianFit(1) for name in available})
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    # -- the network -------------------------------------------------------------------------------

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.features(images.contiguous(memory_format=torch.channels_last))
        return features.flatten(1), self.net.head(features)

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of each transformation of each image, float32 [B, K (applied), K (predicted)],
        and the features of the untransformed image [B, F] (the k-NN features)."""
        prepared = self.transformations.prepare(images)
        log_probs, identity = [], None
        for k in range(self.num_transformations):  # one transformation at a time: memory of one batch
            features, logits = self.features_and_logits(self.transformations.apply(prepared, k))
            log_probs.append(F.log_softmax(logits.float(), dim=1))
            if k == 0:
                identity = features.float()
        return torch.stack(log_probs, dim=1), identity

    def identity_features(self, images: torch.Tensor) -> torch.Tensor:
        """The features of the untransformed (padded) images [B, F], float32: what `forward` returns
        beside the log-probabilities, at the cost of one pass instead of K (the k-NN bank's codes)."""
        return self.features_and_logits(self.transformations.prepare(images))[0].float()

    def feature_layer(self) -> nn.Conv2d | None:
        return self.net.input_layer()

    def blurred_pixels(self, images: torch.Tensor) -> torch.Tensor:
        if self.pixel_blur == 0:
            return images.float().flatten(1)
        size = 2 * int(3 * self.pixel_blur + 0.5) + 1
        return gaussian_blur(images.float(), [size, size], [self.pixel_blur, self.pixel_blur]).flatten(1)

    # -- scores ------------------------------------------------------------------------------------

    def _raw_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every score but `combined`."""
        log_probs, features = self(images)
        pixels = self.blurred_pixels(images) if self.pixel_neighbours is not None else None
        return self._scores_of(log_probs, features, pixels)

    def _scores_of(
        self,
        log_probs: torch.Tensor,
        features: torch.Tensor,
        pixels: torch.Tensor | None,
        exclude_self: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Every score but `combined` from the log-probabilities [B, K, K], the identity features and
        the blurred pixels; `exclude_self` for images that are in the k-NN banks."""
        applied = log_probs.diagonal(dim1=1, dim2=2)  # [B, K]: log p(k | T_k x)
        scores = {
            "loss": -applied.mean(1),
            "dirichlet": -(log_probs * self.dirichlet_weights).sum((1, 2)),
        }
        if self.neighbours is not None and self.neighbours.fitted:
            scores["knn"] = self.neighbours.distance(features, exclude_self=exclude_self)
        if self.pixel_neighbours is not None and self.pixel_neighbours.fitted:
            scores["pixel_knn"] = self.pixel_neighbours.distance(pixels, exclude_self=exclude_self)
        return scores

    def _with_combined(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if all(name in scores for name in self.combine):
            scores["combined"] = sum(self.standardise[name].standardize(scores[name]) for name in self.combine)
        return scores

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy of the applied transformation, averaged over the K transformations, float32 [B]."""
        images, _ = batch
        log_probs, _ = self(images)
        return -log_probs.diagonal(dim1=1, dim2=2).mean(1)

    def anomaly_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """loss, dirichlet, knn, pixel_knn (where on) and combined, float32 [B] each (module docstring)."""
        images, _ = batch
        return self._with_combined(self._raw_scores(images))

    def score_names(self) -> tuple[str, ...]:
        on = {"knn": self.neighbours is not None, "pixel_knn": self.pixel_neighbours is not None}
        return (*(name for name in SCORES if on.get(name, True)), "combined")

    # -- training ----------------------------------------------------------------------------------

    def _shared_step(self, batch: Batch, stage: str) -> EvalOutput:
        images, _ = batch
        if stage == "train":
            transformed, labels = self.transformations.apply_all(images)
            _, logits = self.features_and_logits(transformed)
            loss = F.cross_entropy(logits.float(), labels)
            self.log_step("train/loss", loss, prog_bar=True)
            return {"loss": loss}
        scores = self._raw_scores(images)
        # over the normal images only, in an anomaly run
        self.update_on_normal(getattr(self, f"{stage}_loss"), scores["loss"], batch[1])
        return {"loss": scores["loss"].mean(), "scores": self._with_combined(scores)}

    def epoch_metrics(self, stage: str) -> dict:
        return {} if stage == "train" else {"loss": getattr(self, f"{stage}_loss")}

    @override
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        # During fit every validation refits the banks, the Dirichlets and the standardisation to the
        # weights it validates; `validate` of a checkpoint keeps what it carries.
        fitting = self.trainer.state.fn == "fit"
        if (
            self.neighbours is not None
            and (fitting or not self.neighbours.fitted)
            and self.reads_training_images("knn")
        ):
            self.neighbours.fit(self.over_training_images(self.identity_features, self.neighbours.bank_indices))
        pixels = self.pixel_neighbours
        if pixels is not None and not pixels.fitted and self.reads_training_images("pixel_knn"):  # weights: no part
            pixels.fit(self.over_training_images(self.blurred_pixels, pixels.bank_indices))
        if fitting and self.reads_training_images("dirichlet"):
            self.fit_to_training_images()

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # A checkpoint saved before every score had a standardisation lacks some: they keep their unfitted
        # defaults (mean 0, std 1), which only matters for a score that `combine` does not name.
        state = checkpoint.get("state_dict", {})
        absent = [key for key in self.state_dict() if key.startswith("standardise.") and key not in state]
        for key in absent:
            state[key] = self.state_dict()[key]

    def fit_indices(self, n: int) -> torch.Tensor:
        """Which of n training images the Dirichlets and the standardisation are fitted on: FIT_IMAGES of
        those the k-NN banks keep (all, if fewer), drawn with a fixed generator, so that each is in the
        banks and its own match can be left out of its k-NN scores."""
        banks = [b for b in (self.neighbours, self.pixel_neighbours) if b is not None]
        # both banks keep the same images: one max_bank, one generator (NearestNeighbours.bank_indices)
        kept = banks[0].bank_indices(n) if banks else torch.arange(n)
        if len(kept) <= FIT_IMAGES:
            return kept
        return kept[torch.randperm(len(kept), generator=torch.Generator().manual_seed(1))[:FIT_IMAGES]].sort().values

    @torch.no_grad()
    def fit_to_training_images(self) -> None:
        """Fit the Dirichlet of each transformation to the predictions on the `fit_indices` training
        images, then the standardisation of every score to those images' scores (module docstring)."""
        k = self.num_transformations

        def packed(images: torch.Tensor) -> torch.Tensor:  # one tensor, as over_training_images concatenates
            log_probs, features = self(images)
            return torch.cat([log_probs.flatten(1), features], dim=1)

        values = self.over_training_images(packed, self.fit_indices)
        log_probs, features = values[:, : k * k].view(-1, k, k), values[:, k * k :]
        if len(log_probs) < 2:
            return
        alphas = torch.stack([fit_dirichlet(log_probs[:, t]) for t in range(k)])
        self.dirichlet_weights.copy_((alphas - 1).to(self.dirichlet_weights))
        pixels = None
        if self.pixel_neighbours is not None:
            pixels = self.over_training_images(self.blurred_pixels, self.fit_indices)
        scores = self._scores_of(log_probs, features, pixels, exclude_self=True)
        for name, score in scores.items():
            self.standardise[name].fit_to(score[:, None])
