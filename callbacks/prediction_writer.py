"""Write `predict` outputs to files in the run directory, batch by batch and rank by rank.

Each rank writes its batches (with their dataset indices) as it goes; at the end rank zero merges
them in dataset order into `predictions.pt` (every tensor) and `predictions.csv` (the per-sample
scalars and vectors), so nothing is held in memory for the whole split during the loop. Predicted
segmentation masks (a `mask` [B, H, W] in the prediction) are also written one PNG per sample,
`masks/<index>.png`, as they come. In an anomaly run (the DataModule's `normal_classes` set) each
sample's `is_anomaly` is added from its label.
"""

import csv
import shutil
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from callbacks.mask_palette import write_mask_png


class PredictionWriter(BasePredictionWriter):
    """Args:
    output_dir: Where to write; None means the run directory (`trainer.log_dir`).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._resolved: Path | None = None

    def _dir(self, trainer) -> Path:
        # Resolved once, by every rank together: trainer.log_dir is a collective under DDP, which rank
        # zero calling alone (to merge) would wait on for ever.
        if self._resolved is None:
            self._resolved = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        return self._resolved

    def _parts(self, trainer) -> Path:
        return self._dir(trainer) / ".prediction_parts"

    @override
    def on_predict_start(self, trainer, pl_module) -> None:
        self._resolved = None
        self._dir(trainer)
        if trainer.is_global_zero:
            shutil.rmtree(self._parts(trainer), ignore_errors=True)
            shutil.rmtree(self._dir(trainer) / "masks", ignore_errors=True)  # no stale masks of an earlier predict
        trainer.strategy.barrier()
        (self._parts(trainer) / f"rank{trainer.global_rank}").mkdir(parents=True, exist_ok=True)

    @override
    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int, dataloader_idx: int
    ) -> None:
        if not isinstance(prediction, dict) or batch_indices is None:
            return
        part = {key: value.detach().cpu() for key, value in prediction.items() if isinstance(value, torch.Tensor)}
        part["index"] = torch.as_tensor(batch_indices, dtype=torch.long)
        datamodule = trainer.datamodule
        labels = batch[1] if isinstance(batch, list | tuple) and len(batch) == 2 else None
        if getattr(datamodule, "normal_classes", None) is not None and labels is not None and labels.dim() == 1:
            part["is_anomaly"] = datamodule.is_anomaly(labels).cpu()
        torch.save(part, self._parts(trainer) / f"rank{trainer.global_rank}" / f"{dataloader_idx}_{batch_idx:07d}.pt")
        if "mask" in part and part["mask"].dim() == 3:
            self._write_masks(trainer, pl_module, part["mask"], part["index"])

    def _write_masks(self, trainer, pl_module, masks: torch.Tensor, index: torch.Tensor) -> None:
        folder = self._dir(trainer) / "masks"
        folder.mkdir(parents=True, exist_ok=True)
        # The model's class count fixes the colours (protocol: DensePredictor); else the largest class seen.
        num_classes = int(getattr(pl_module, "num_classes", 0) or int(masks.max()) + 1)
        for mask, i in zip(masks, index.tolist(), strict=True):
            write_mask_png(folder / f"{i:05d}.png", mask, num_classes)

    @override
    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self._merge(trainer)
        trainer.strategy.barrier()

    def _merge(self, trainer) -> None:
        files = sorted(self._parts(trainer).glob("rank*/*.pt"))
        if not files:
            return
        parts = [torch.load(f, weights_only=True) for f in files]
        merged = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        order = merged["index"].argsort()
        merged = {key: value[order] for key, value in merged.items()}
        out = self._dir(trainer)
        torch.save(merged, out / "predictions.pt")
        columns = ["index"] + [k for k, v in merged.items() if k != "index" and v.dim() == 1]
        vectors = [k for k, v in merged.items() if v.dim() == 2]
        with open(out / "predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns + [f"{k}_{j}" for k in vectors for j in range(merged[k].shape[1])])
            table = [merged[k].tolist() for k in columns]
            wide = [merged[k].tolist() for k in vectors]
            for row in range(len(merged["index"])):
                writer.writerow([col[row] for col in table] + [x for rows in wide for x in rows[row]])
        shutil.rmtree(self._parts(trainer), ignore_errors=True)
