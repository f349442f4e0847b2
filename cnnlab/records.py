"""A run's records, written by a callback (`RunRecord`) so that a plain `Trainer` with it gets the same
files as `train.py`.

- A training run's `summary.json`: seed, data seed, resolved config, git commit, fit metrics, best and
  last checkpoint, status (running, finished, failed, interrupted) and why it failed. Once the run has
  finished, no later command changes these; resuming an unfinished run continues it and lists the
  resume (step, checkpoint, settings changed) under `resumes`.
- Every validate / test / predict with a checkpoint writes an evaluation record of its own, in its own
  directory (`<run>/evaluations/<time>-<subcommand>/summary.json`): the checkpoint and its SHA-256, the
  data it ran on (DataModule, data_dir, split, size and a fingerprint of the exact images and labels),
  the seed (the run's own, read from the checkpoint), metrics and times. The run's `summary.json`
  lists its evaluations under `evaluations`, each appended, none lost.
- Each checkpoint carries `checkpoint["cnnlab"]`: the run's seed, data seed, experiment and run
  directory, so an evaluation knows them even for a checkpoint copied elsewhere.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import time
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from cnnlab.errors import CnnlabError
from cnnlab.run_dir import new_evaluation_dir

SUMMARY = "summary.json"
CHECKPOINT_KEY = "cnnlab"  # our entry in a Lightning checkpoint
METRIC_PREFIXES = {"fit": ("train/", "val/"), "validate": ("val/",), "test": ("test/",), "predict": ()}


# -- files -----------------------------------------------------------------------------------------


def read_summary(directory: Path | str | None) -> dict:
    path = Path(directory or ".", SUMMARY)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def write_summary(directory: Path, summary: dict) -> None:
    """Replace summary.json whole (a reader never sees half a file)."""
    tmp = directory / f".{SUMMARY}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    tmp.replace(directory / SUMMARY)


@contextlib.contextmanager
def locked(directory: Path):
    """One writer of a directory's summary.json at a time (two evaluations of one run may end together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".{SUMMARY}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_summary(directory: Path, change) -> dict:
    """Read, change (a function of the dict, in place) and write summary.json under the lock."""
    with locked(directory):
        summary = read_summary(directory)
        change(summary)
        write_summary(directory, summary)
        return summary


@cache
def git_commit() -> str | None:
    """The commit of the code that runs (with "-dirty" for uncommitted changes to tracked files), or
    None outside a git checkout. Once per process: a worker keeps the code it imported."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def data_identity(datamodule, split: str | None) -> dict:
    """What an evaluation ran on: the DataModule class and settings that choose the data, the split,
    its size and a fingerprint (SHA-256) of its exact images and labels as loaded."""
    if datamodule is None:
        return {}
    identity: dict[str, Any] = {"class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"}
    for name in ("data_dir", "data_seed", "val_size", "normal_classes", "max_train_samples", "max_eval_samples"):
        if hasattr(datamodule, name):
            value = getattr(datamodule, name)
            identity[name] = str(Path(value).resolve()) if name == "data_dir" else value
    for name in ("noise", "noise_level", "binarize"):
        if getattr(datamodule, name, None) is not None:
            identity[name] = getattr(datamodule, name)
    if split is not None:
        identity["split"] = split
        with contextlib.suppress(CnnlabError, AttributeError):
            images, labels = datamodule.samples(split)
            identity |= {"size": len(labels), "fingerprint": tensors_sha256(images, labels)}
    return identity


def now() -> str:
    return datetime.now().isoformat(timespec="seconds")


# -- the callback ----------------------------------------------------------------------------------


class RunRecord(Callback):
    """Writes the run's records (see the module docstring).

    Args:
        directory: Where this command's summary.json goes: the run directory for fit, the evaluation's
            own directory for validate/test/predict. None: the trainer's log_dir.
        run_dir: The training run an evaluation belongs to (its summary lists the evaluation); None
            for fit, or an evaluation of a checkpoint that belongs to no run.
        experiment: The experiment name (the folder the run lives in).
        seed: The model seed; None: the one `seed_everything` set (PL_GLOBAL_SEED).
        config: The resolved config to record; None: the model's and the DataModule's hparams.
        checkpoint: For an evaluation, the checkpoint's path; for a resume, the one it continues from.
        details: More fields for the record (what a resume or an evaluation changed, W&B's mode...).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        run_dir: str | Path | None = None,
        experiment: str | None = None,
        seed: int | None = None,
        config: dict | None = None,
        checkpoint: str | Path | None = None,
        details: dict | None = None,
    ) -> None:
        self.directory = Path(directory) if directory else None
        self.run_dir = Path(run_dir) if run_dir else None
        self.experiment, self.seed, self.config = experiment, seed, config
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.details = dict(details or {})
        self._started = time.time()
        self._stage: str | None = None

    # -- what the record says ----------------------------------------------------------------

    def _dir(self, trainer: Trainer) -> Path:
        return self.directory or Path(trainer.log_dir or trainer.default_root_dir)

    def _evaluation_dirs(self, trainer: Trainer) -> tuple[Path, Path | None]:
        """Where an evaluation's record goes, and the run it belongs to. A plain Trainer that tests
        after fitting logs into the run's own folder: its record goes to `evaluations/<time>-<stage>/`
        there, so the finished training record is never rewritten."""
        directory = self._dir(trainer)
        if self.directory is None and read_summary(directory).get("kind") == "training":
            evaluation = new_evaluation_dir(directory, self._stage or "evaluation")
            evaluation.mkdir(parents=True)
            return evaluation, directory
        return directory, self.run_dir

    def _seed(self) -> int | None:
        if self.seed is not None:
            return self.seed
        value = os.environ.get("PL_GLOBAL_SEED")
        return int(value) if value not in (None, "") else None

    def _config(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        if self.config is not None:
            return self.config
        model = {"class_path": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}", **pl_module.hparams}
        return {"model": model, "data": dict(getattr(trainer.datamodule, "hparams", {}) or {})}

    def _wandb(self, trainer: Trainer) -> dict | None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                offline = getattr(logger, "offline", getattr(logger, "_offline", False))
                return {
                    "id": logger.version,
                    "project": logger.name,
                    "dir": logger.save_dir,
                    "mode": None if offline is None else "offline" if offline else "online",  # None: not started
                    "started": bool(getattr(logger, "started", getattr(logger, "_experiment", None) is not None)),
                }
        return None

    def _metrics(self, trainer: Trainer, stage: str) -> dict[str, float]:
        prefixes = METRIC_PREFIXES.get(stage, ())
        return {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if prefixes and key.startswith(prefixes) and value.numel() == 1
        }

    def _base(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        datamodule = trainer.datamodule
        return {
            "experiment": self.experiment,
            "seed": self._seed(),
            "data_seed": getattr(datamodule, "data_seed", None),
            "git_commit": git_commit(),
            "config": self._config(trainer, pl_module),
        }

    # -- fit -------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stage = stage
        self._started = time.time()

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        directory = self._dir(trainer)

        def start(summary: dict) -> None:
            resuming = bool(summary)  # an unfinished run continued in its own directory
            if not resuming:
                summary |= {"kind": "training", "run_dir": str(directory), "started": now()}
                summary |= self._base(trainer, pl_module)
            if self.checkpoint:
                resume = {"from": self.checkpoint, "at": now(), **self.details.get("resume", {})}
                summary.setdefault("resumes", []).append(resume)
                summary.pop("error", None)
            summary |= {"status": "running", "wandb": self._wandb(trainer)}

        update_summary(directory, start)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        checkpoint = trainer.checkpoint_callback
        metrics = self._metrics(trainer, "fit")
        seconds = round(time.time() - self._started, 3)

        def finish(summary: dict) -> None:
            summary |= {
                "status": "finished",
                "finished": now(),
                "wandb": self._wandb(trainer),
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "metrics": {**summary.get("metrics", {}), **metrics},
                "fit_seconds": round(summary.get("fit_seconds", 0.0) + seconds, 3),
            }
            if checkpoint is not None:
                score = getattr(checkpoint, "best_model_score", None)
                summary |= {
                    "best_checkpoint": getattr(checkpoint, "best_model_path", None) or None,
                    "best_score": None if score is None else float(score),
                    "monitor": getattr(checkpoint, "monitor", None),
                    "mode": getattr(checkpoint, "mode", None),
                    "last_checkpoint": getattr(checkpoint, "last_model_path", None) or None,
                }

        update_summary(self._dir(trainer), finish)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "seed": self._seed(),
            "data_seed": getattr(trainer.datamodule, "data_seed", None),
            "experiment": self.experiment,
            "run_dir": str(self._dir(trainer)),
            "git_commit": git_commit(),
            "config": self._config(trainer, pl_module),
        }

    # -- evaluations -----------------------------------------------------------------------------

    def _evaluation_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.state.fn == TrainerFn.FITTING or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        split = {"validate": "val", "test": "test", "predict": getattr(datamodule, "predict_split", "test")}[stage]
        directory, run_dir = self._evaluation_dirs(trainer)
        checkpoint = {"path": self.checkpoint}
        if self.checkpoint and Path(self.checkpoint).is_file():
            checkpoint["sha256"] = file_sha256(self.checkpoint)
        record = {
            "kind": "evaluation",
            "subcommand": stage,
            "status": "finished",
            "dir": str(directory),
            "run_dir": str(run_dir) if run_dir else None,
            "checkpoint": checkpoint,
            "data": data_identity(datamodule, split),
            "metrics": self._metrics(trainer, stage),
            "started": datetime.fromtimestamp(self._started).isoformat(timespec="seconds"),
            "finished": now(),
            "seconds": round(time.time() - self._started, 3),
            "wandb": self._wandb(trainer),
            **self._base(trainer, pl_module),
            **self.details,
        }
        update_summary(directory, lambda summary: summary.update(record))
        if run_dir is not None and run_dir.resolve() != directory.resolve():
            entry = {
                k: record[k] for k in ("subcommand", "status", "dir", "checkpoint", "metrics", "finished", "seconds")
            }
            entry["data"] = {k: record["data"].get(k) for k in ("split", "size", "fingerprint", "data_dir")}
            update_summary(run_dir, lambda summary: summary.setdefault("evaluations", []).append(entry))

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluation_end(trainer, pl_module, "validate")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluation_end(trainer, pl_module, "test")

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluation_end(trainer, pl_module, "predict")

    # -- failures --------------------------------------------------------------------------------

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        stopped = isinstance(exception, KeyboardInterrupt | SystemExit) or getattr(exception, "interrupts_run", False)
        status = "interrupted" if stopped else "failed"
        error = f"{type(exception).__name__}: {exception}"[:2000]
        fitting = trainer.state.fn == TrainerFn.FITTING

        def fail(summary: dict) -> None:
            if not summary:
                summary |= {"kind": "training" if fitting else "evaluation", "started": now()}
                summary |= self._base(trainer, pl_module)
                if not fitting:
                    summary |= {"subcommand": self._stage, "checkpoint": {"path": self.checkpoint}}
            summary |= {"status": status, "error": error, "finished": now()}

        directory, run_dir = (self._dir(trainer), None) if fitting else self._evaluation_dirs(trainer)
        update_summary(directory, fail)
        if not fitting and run_dir is not None and run_dir.resolve() != directory.resolve():
            entry = {"subcommand": self._stage, "status": status, "dir": str(directory), "error": error}
            entry |= {"checkpoint": {"path": self.checkpoint}, "finished": now()}
            update_summary(run_dir, lambda summary: summary.setdefault("evaluations", []).append(entry))
