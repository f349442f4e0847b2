"""LatentSpaceScatter: a fixed labelled subset encoded and drawn in 2-D, coloured by class, once
before training and every n epochs, so "before" is visible next to "after"."""

from typing import Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from callbacks.figure import FigureCallback, fixed_subset
from callbacks.media import pyplot
from callbacks.projection import pca_2d, tsne_2d
from cnnlab.errors import CnnlabError
from cnnlab.protocol import LatentModel


class LatentSpaceScatter(FigureCallback):
    """Encode a fixed subset of the validation split with `encode(x)` (protocol: LatentModel) and
    draw it in 2-D.

    latent_dim 2 is drawn as it is; larger codes are projected by PCA (default) or t-SNE.
    During `test` the test split is drawn once.

    Args:
        num_samples: Size of the subset (classes taken in turn, chosen once from `seed`).
        every_n_epochs: Draw after every n-th training epoch (and after the last).
        projection: 'pca' (an SVD: milliseconds) or 'tsne' (exact t-SNE in torch: seconds for
            a thousand points, O(num_samples^2)).
        perplexity: t-SNE's effective number of neighbours.
        seed: Chooses the subset and t-SNE's start.
        batch_size: Images encoded at once.
    """

    requires = (LatentModel,)
    what = "a model with a latent space"

    def __init__(
        self,
        num_samples: int = 1000,
        every_n_epochs: int = 1,
        projection: Literal["pca", "tsne"] = "pca",
        perplexity: float = 30.0,
        seed: int = 0,
        batch_size: int = 500,
    ) -> None:
        super().__init__(every_n_epochs)
        if num_samples < 2 or batch_size < 1:
            raise CnnlabError(
                f"LatentSpaceScatter got num_samples={num_samples}, batch_size={batch_size}; expected "
                "num_samples >= 2 and batch_size >= 1."
            )
        if projection not in ("pca", "tsne"):
            raise CnnlabError(f"LatentSpaceScatter projection must be 'pca' or 'tsne', got '{projection}'.")
        self.num_samples, self.projection = num_samples, projection
        self.perplexity, self.seed, self.batch_size = perplexity, seed, batch_size

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The codes before training are taken now; the picture is drawn at the end of the first epoch.
        if self.fresh_start(trainer) and self.draws(trainer):
            codes = self.codes(trainer, pl_module, "val")
            self.later(lambda: self.draw(trainer, pl_module, "val", "before-training", "before training", codes, 0))

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.due(trainer) and self.draws(trainer):
            self.draw(trainer, pl_module, "val", tag=None, title=self.epoch_title(trainer))

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.draws(trainer):
            self.draw(trainer, pl_module, "test", tag="test", title="test split")

    def codes(self, trainer: Trainer, pl_module: LightningModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The subset's latent codes [N, D] (float32, CPU) and labels [N]."""
        images, labels = self.samples(trainer, split)
        index = fixed_subset(labels, self.num_samples, self.seed)
        codes = []
        with self.evaluating(trainer, pl_module):
            for chunk in index.split(self.batch_size):
                x = self.model_input(trainer, pl_module, images[chunk])
                codes.append(pl_module.encode(x).float().flatten(1).cpu())
        return torch.cat(codes), labels[index]

    def draw(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        split: str,
        tag: str | None,
        title: str,
        codes: tuple[torch.Tensor, torch.Tensor] | None = None,
        step: int | None = None,
    ) -> None:
        codes, labels = codes if codes is not None else self.codes(trainer, pl_module, split)
        dim = codes.shape[1]
        if dim <= 2:
            points = torch.cat([codes, torch.zeros(len(codes), 2 - dim)], dim=1)
            axes = ("z1", "z2" if dim == 2 else "")
            how = f"latent_dim {dim}, drawn directly"
        elif self.projection == "pca":
            points, share = pca_2d(codes)
            axes = (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%})")
            how = f"PCA of {dim}-D codes"
        else:
            points = tsne_2d(codes, self.perplexity, seed=self.seed)
            axes = ("t-SNE 1", "t-SNE 2")
            how = f"t-SNE of {dim}-D codes, perplexity {self.perplexity:g}"
        figure = scatter_figure(points, labels, self.class_names(trainer), axes, f"{split}: {how}, {title}")
        self.draw_figure(trainer, "latent/scatter", figure, tag=tag, step=step)


def scatter_figure(points: torch.Tensor, labels: torch.Tensor, class_names: list[str], axes, title: str):
    plt = pyplot()
    classes = labels.unique().tolist()
    cmap = plt.get_cmap("tab10" if max(classes) < 10 else "tab20")
    figure, axis = plt.subplots(figsize=(5.6, 4.6))
    # One scatter call in the subset's interleaved order, so no class is painted over the others.
    colours = [cmap(c % cmap.N) for c in labels.tolist()]
    axis.scatter(points[:, 0], points[:, 1], c=colours, s=7, alpha=0.8, linewidths=0)
    for c in classes:
        name = class_names[c] if c < len(class_names) else str(c)
        axis.scatter([], [], color=cmap(c % cmap.N), s=20, label=name)
    axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8, title="class")
    axis.set_xlabel(axes[0])
    axis.set_ylabel(axes[1])
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure
