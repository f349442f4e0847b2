"""LossHistogram: the per-sample scores of a whole validation or test split, as the evaluation steps
computed them (protocol: EvalOutput), gathered across ranks with every sample exactly once, drawn:
histograms (normal vs anomalous samples in an anomaly run, per class otherwise), the most typical and
most anomalous samples, and a per-sample CSV. It computes and logs no metric: the anomaly metrics
(AUROC, AUPRC, best F1 and its threshold) are the model's, computed at every validation and test
whatever callbacks run (lightning_modules/base.py, docs/anomaly.md); the figures show the model's.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from typing_extensions import override

from callbacks.figure import FigureCallback
from callbacks.media import log_table, pyplot
from callbacks.mosaic import Mosaic, colorize
from cnnlab.errors import CnnlabError
from cnnlab.gather import gather_ranks
from cnnlab.protocol import AnomalyModel, EvaluationScores


@dataclass
class SplitScores:
    """One split's scores in dataset order, each sample once."""

    index: torch.Tensor  # [N] position in the split
    label: torch.Tensor  # [N]
    scores: dict[str, torch.Tensor]  # name -> [N] float32
    is_anomaly: torch.Tensor  # [N] bool


def in_dataset_order(index: torch.Tensor, label: torch.Tensor, values: torch.Tensor):
    """Rows of every rank sorted by dataset index, each index once (a padding sampler repeats
    some samples to even out the ranks; those repeats must not count twice)."""
    order = torch.argsort(index, stable=True)
    index, label, values = index[order], label[order], values[order]
    first = torch.ones(len(index), dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return index[first], label[first], values[first]


def loader_order(loader: DataLoader, who: str) -> list[int]:
    """The dataset indices this rank's loader yields, in order (an unshuffled sampler only)."""
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler) or (isinstance(sampler, DistributedSampler) and sampler.shuffle):
        raise CnnlabError(
            f"{who} needs validation and test loaders that do not shuffle (it matches each score to its "
            "sample by position), but this loader's sampler shuffles. Build evaluation loaders with "
            "shuffle=False, as cnnlab's DataModules do."
        )
    if loader.batch_sampler is not None:
        return [int(i) for batch in loader.batch_sampler for i in batch]
    return [int(i) for i in sampler]


class LossHistogram(FigureCallback):
    """Draws the per-sample scores of whole splits at validation and test end.

    The scores are those the model's validation and test steps return (`EvalOutput["scores"]`: its
    `per_sample_loss` as 'loss', and an anomaly model's every score), collected as the batches go:
    no second forward pass. At the end of the split they are gathered from all ranks and put in
    dataset order, each sample once. With figures off (a sweep's later seeds) it collects nothing.

    It draws after the model's own epoch end (in `on_validation_end`/`on_test_end`: Lightning calls a
    callback's `on_*_epoch_end` before the module's), so it shows what the model computed for this
    split. With `data.normal_classes` set, samples of other classes are anomalies: the histograms
    show normal against anomalous samples, the dashed line is the model's best-F1 threshold of the
    last validation (`anomaly_thresholds`), the titles its AUROC and AUPRC of this split and, at
    test, its precision/recall/F1 at that threshold (`anomaly_results`; lightning_modules/base.py,
    docs/anomaly.md). Where the model gives none, no line or AUROC is drawn. Without normal classes
    the histogram is drawn per class (or all together).

    Files: `figures/<stage>_loss_histogram/`, `<stage>_extremes/` and `<stage>_per_sample_scores/`
    (a CSV, with a `flagged` column, score >= threshold, where there is a threshold), one per
    validation epoch during fit (`epoch<NNN>`, from 0 like the progress bar), `test` and `validate`
    for those commands.

    Args:
        score: The score that picks the most typical/anomalous samples and the 'flagged' column;
            None: the model's primary score (`primary_score`, else 'loss').
        bins: Histogram bins (shared by all groups of one score).
        log_x: Log-spaced bins and a log x axis; None decides per score: log where all scores are
            positive and span more than two decades (a classifier's cross-entropy does).
        log_y: Log count axis, so a few outliers stay visible next to the bulk.
        per_class: Without normal classes, one histogram per class instead of one for all.
        num_extremes: How many most typical and most anomalous samples to show.
        every_n_epochs: During fit, draw every n-th validation epoch (and the last).
        stages: Which of 'val' and 'test' to draw.
        wandb_table_max_rows: Longest split sent to W&B as a table (the CSV always has every row).
    """

    requires = (EvaluationScores,)
    what = "evaluation steps that return per-sample scores (a cnnlab LightningModule)"

    def __init__(
        self,
        score: str | None = None,
        bins: int = 60,
        log_x: bool | None = None,
        log_y: bool = False,
        per_class: bool = True,
        num_extremes: int = 8,
        every_n_epochs: int = 1,
        stages: list[Literal["val", "test"]] | None = None,
        wandb_table_max_rows: int = 20_000,
    ) -> None:
        super().__init__(every_n_epochs)
        stages = ["val", "test"] if stages is None else list(stages)
        if bins < 1 or num_extremes < 0 or not set(stages) <= {"val", "test"}:
            raise CnnlabError(
                f"LossHistogram got bins={bins}, num_extremes={num_extremes}, stages={stages}; expected "
                "bins >= 1, num_extremes >= 0 and stages from ['val', 'test']."
            )
        self.score, self.bins = score, bins
        self.log_x, self.log_y, self.per_class = log_x, log_y, per_class
        self.num_extremes, self.stages = num_extremes, stages
        self.wandb_table_max_rows = wandb_table_max_rows
        self._active = False
        self._order: list[int] = []
        self._batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []

    # -- collecting ------------------------------------------------------------------------------

    def _start(self, trainer: Trainer, stage: str, loaders) -> None:
        self._batches = []
        # The same on every rank (figures on or off is one setting for the run), so either every rank
        # reaches the gather at the end or none does.
        self._active = (
            self.drawing
            and stage in self.stages
            and not trainer.sanity_checking
            and (not self.fitting(trainer) or self.due(trainer))
        )
        if self._active:
            loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
            self._order = loader_order(loader, "LossHistogram")

    def _collect(self, pl_module: LightningModule, outputs, batch, dataloader_idx: int) -> None:
        if not self._active or dataloader_idx != 0:
            return
        scores = outputs.get("scores") if isinstance(outputs, dict) else None
        if not scores:
            raise CnnlabError(
                f"LossHistogram reads the per-sample scores that {type(pl_module).__name__}'s validation and "
                "test steps return ({'loss': ..., 'scores': {'loss': per-sample losses}}, cnnlab/protocol.py's "
                "EvalOutput), but this step returned none. Return them from the step, or remove LossHistogram."
            )
        self._batches.append((batch[1].detach(), {name: v.detach().float().flatten() for name, v in scores.items()}))

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, "val", trainer.val_dataloaders)

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, "test", trainer.test_dataloaders)

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._collect(pl_module, outputs, batch, dataloader_idx)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._collect(pl_module, outputs, batch, dataloader_idx)

    # Not on_*_epoch_end: Lightning calls the callbacks' before the module's, whose anomaly metrics
    # and thresholds the figures show. on_*_end comes after both, on every rank (the gather is collective).
    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active:
            self._draw(trainer, pl_module, "val", self._gather(trainer, pl_module))

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active:
            self._draw(trainer, pl_module, "test", self._gather(trainer, pl_module))

    def _gather(self, trainer: Trainer, pl_module: LightningModule) -> SplitScores:
        """This rank's batches -> every rank's samples in dataset order, duplicates dropped."""
        batches, self._batches, self._active = self._batches, [], False
        names = sorted(batches[0][1]) if batches else []
        if trainer.world_size > 1:  # every rank must agree on the names, or the gather would hang
            names = trainer.strategy.broadcast(names, src=0)
        for _, scores in batches:
            if sorted(scores) != names:
                raise CnnlabError(
                    f"LossHistogram: {type(pl_module).__name__}'s evaluation step returned the scores "
                    f"{sorted(scores)} for one batch and {names} for another; it must return the same names "
                    "for every batch."
                )
        device = pl_module.device
        if batches:
            labels = torch.cat([label.to(device) for label, _ in batches])
            values = torch.stack([torch.cat([s[n].to(device) for _, s in batches]) for n in names], dim=1)
        else:
            labels, values = torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, len(names), device=device)
        # The loader's own order says which sample each score belongs to; a shortened epoch
        # (limit_*_batches) covers a prefix of it.
        index = torch.tensor(self._order[: len(labels)], dtype=torch.long, device=device)
        meta = gather_ranks(torch.stack([index, labels.long()], dim=1)).cpu()
        values = gather_ranks(values.float()).cpu()
        index, label, values = in_dataset_order(meta[:, 0], meta[:, 1], values)
        return SplitScores(
            index=index,
            label=label,
            scores={name: values[:, k] for k, name in enumerate(names)},
            is_anomaly=trainer.datamodule.is_anomaly(label).cpu(),
        )

    # -- drawing ---------------------------------------------------------------------------------

    def _primary(self, pl_module: LightningModule) -> str:
        return pl_module.primary_score if isinstance(pl_module, AnomalyModel) else "loss"

    def _draw(self, trainer: Trainer, pl_module: LightningModule, stage: str, split: SplitScores) -> None:
        if not split.scores:
            return
        shown = self.score or self._primary(pl_module)
        if shown not in split.scores:
            raise CnnlabError(
                f"LossHistogram.score is '{shown}', but {type(pl_module).__name__} offers the scores "
                f"{sorted(split.scores)}. Set score to one of them."
            )
        if not self.draws(trainer):
            return
        # The model's, of this split: its best-F1 thresholds of the last validation and its metrics
        # (lightning_modules/base.py). Only in an anomaly run: a checkpoint of one tested without
        # normal classes still holds thresholds, which mean nothing for a per-class histogram.
        anomaly_split = trainer.datamodule.normal_classes is not None
        thresholds, metrics = {}, {}
        if anomaly_split:
            thresholds = {
                name: float(value)
                for name, value in getattr(pl_module, "anomaly_thresholds", {}).items()
                if name in split.scores and math.isfinite(value)
            }
            metrics = getattr(pl_module, "anomaly_results", {}).get(stage, {})
        name_of = lambda c: self.class_name(trainer, c)  # noqa: E731
        # During fit a file per epoch (epoch<NNN>); a validate or test names its files after itself,
        # as the other figure callbacks do: its epoch counter says nothing about the weights.
        tag = None if self.fitting(trainer) else ("test" if stage == "test" else "validate")
        figure = _histograms(self, split, thresholds, metrics, stage, anomaly_split, name_of)
        self.draw_figure(trainer, f"{stage}/loss_histogram", figure, tag=tag)
        values = split.scores[shown]
        k = min(self.num_extremes, len(values))
        if k:
            picks = torch.cat([values.argsort()[:k], values.argsort(descending=True)[:k]])
            images, _ = self.samples(trainer, stage)
            stored = images[split.index[picks]]
            shown_images = self.display(trainer, trainer.datamodule.model_input(stored))
            extremes = _extremes(shown_images, split, picks, shown, name_of, k)
            self.draw_figure(trainer, f"{stage}/extremes", extremes, tag=tag)
        columns = ["index", "label", *split.scores, "is_anomaly"]
        extra = []
        if shown in thresholds:  # what the threshold decides for each sample, as the model counts it
            columns.append("flagged")
            extra = [(values.double() >= thresholds[shown]).tolist()]  # in float64, as anomaly_report
        table = [split.index.tolist(), split.label.tolist(), *(v.tolist() for v in split.scores.values())]
        table += [split.is_anomaly.tolist(), *extra]
        rows = [list(row) for row in zip(*table, strict=True)]
        to_wandb = stage == "test" and len(rows) <= self.wandb_table_max_rows
        log_table(trainer, f"{stage}/per_sample_scores", columns, rows, tag=tag, to_wandb=to_wandb)


# -- figures (matplotlib imported here, not at start-up) ----------------------------------------

REPORTED = ("auroc", "auprc", "best_f1", "precision", "recall", "f1")  # the model's metrics a title shows


def _bin_edges(values: torch.Tensor, bins: int, log: bool):
    import numpy as np

    low, high = float(values.min()), float(values.max())
    if log:
        low, high = np.log10(low), np.log10(high)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    return 10**edges if log else edges


def _histograms(callback: LossHistogram, split: SplitScores, thresholds, metrics, stage, anomaly_split, name_of):
    import numpy as np

    plt = pyplot()
    names = list(split.scores)
    by_class = not anomaly_split and callback.per_class
    # Ten overlaid class histograms are unreadable: per class, a box per class beside the histogram of all.
    cols = 2 if by_class else 1
    figure, axes = plt.subplots(len(names), cols, figsize=(5.4 * cols, 3.8 * len(names)), squeeze=False)
    if anomaly_split:
        groups = [("normal", ~split.is_anomaly, "tab:blue"), ("anomalous", split.is_anomaly, "tab:red")]
    else:
        groups = [("all", torch.ones_like(split.is_anomaly), "tab:blue")]
    for row, name in enumerate(names):
        axis, values = axes[row, 0], split.scores[name]
        positive = bool((values > 0).all())
        wide = positive and float(values.max()) > 100 * float(values.min())
        log_x = positive and (wide if callback.log_x is None else callback.log_x)
        edges = _bin_edges(values, callback.bins, log_x)
        for label, mask, colour in groups:
            group = values[mask].numpy()
            if len(group) == 0:
                continue
            counts, _ = np.histogram(group, bins=edges)
            share = counts / len(group)  # share of the group, so groups of any size compare
            if not callback.log_y:  # a filled area down to zero has no place on a log axis
                axis.stairs(share, edges, fill=True, alpha=0.2, color=colour)
            axis.stairs(share, edges, color=colour, label=f"{label} ({len(group)})")
        if name in thresholds:
            axis.axvline(
                thresholds[name],
                color="black",
                linestyle="--",
                label=f"best-F1 threshold on validation\n{thresholds[name]:.3g}",
            )
        lines = [f"{stage}: {name} of {len(values)} samples"]
        found = {key: float(metrics[f"{stage}/{name}_{key}"]) for key in REPORTED if f"{stage}/{name}_{key}" in metrics}
        if "auroc" in found and math.isnan(found["auroc"]):
            lines.append("AUROC undefined: the split has only one kind of sample")
        elif "auroc" in found:
            lines.append(f"AUROC {found['auroc']:.3f}, AUPRC {found['auprc']:.3f}")
            if stage == "test" and "f1" in found:
                lines[-1] += f"; at threshold P {found['precision']:.2f} R {found['recall']:.2f} F1 {found['f1']:.2f}"
            elif stage == "val" and "best_f1" in found:
                lines[-1] += f"; best F1 {found['best_f1']:.2f}"
        if log_x:
            axis.set_xscale("log")
        if callback.log_y:
            axis.set_yscale("log")
        axis.set_xlabel(f"{name} per sample" + (" (log)" if log_x else ""))
        axis.set_ylabel("share of samples")
        axis.set_title("\n".join(lines), fontsize=9)
        axis.legend(fontsize=7, loc="best")
        if by_class:
            _class_boxes(axes[row, 1], values, split.label, name, name_of, log_x)
    figure.tight_layout()
    return figure


def _class_boxes(axis, values: torch.Tensor, labels: torch.Tensor, name: str, name_of, log: bool) -> None:
    """One box per class (quartiles, whiskers at the 5th and 95th percentiles, median line), so
    the hard classes stand out."""
    classes = labels.unique().tolist()
    data = [values[labels == c].numpy() for c in classes]
    axis.boxplot(data, whis=(5, 95), showfliers=False, widths=0.6, medianprops={"color": "black"})
    axis.set_xticks(range(1, len(classes) + 1), [name_of(int(c)) for c in classes], fontsize=8)
    axis.set_xlabel("class")
    if log:
        axis.set_yscale("log")
    axis.set_ylabel(f"{name} per sample")
    axis.set_title("per class: quartiles, whiskers at 5th/95th percentile", fontsize=9)


def _extremes(images: torch.Tensor, split: SplitScores, picks: torch.Tensor, score: str, name_of, k: int):
    """Two rows: the k lowest and the k highest scores; true anomalies framed in red."""
    _, _, h, w = images.shape
    mosaic = Mosaic(2, k, h, w, pad=6)
    for n, pick in enumerate(picks.tolist()):
        row, col = divmod(n, k)
        title = f"{name_of(int(split.label[pick]))}: {float(split.scores[score][pick]):.3g}"
        mosaic.put(row, col, colorize(images[n]), title)
        if bool(split.is_anomaly[pick]):
            mosaic.frame(row, col, (0.85, 0.1, 0.1), width=3)
    mosaic.row_label(0, "most typical")
    mosaic.row_label(1, "most anomalous")
    return mosaic.figure(f"lowest and highest {score} (class: score; red frame: anomalous class)", inches_per_cell=1.1)
