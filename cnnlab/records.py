"""A run's records, written by a callback (`RunRecord`) so that a plain `Trainer` with it gets the same
files as `train.py`.

- A training run's `summary.json`: seed, data seed, resolved config, git commit, fit metrics, best and
  last checkpoint, status (running, finished, failed, interrupted) and why it failed, and `smoke` (a
  fast_dev_run, which `--ckpt_path best|last` never takes). Once the run has finished, no later
  command changes these; resuming an unfinished run continues it and lists the resume (step,
  checkpoint, settings changed) under `resumes`.
- Every validate / test / predict with a checkpoint writes an evaluation record of its own, in its own
  directory (`<run>/evaluations/<time>-<subcommand>/summary.json`): the checkpoint and its SHA-256, the
  data it ran on (DataModule, data_dir, split, size and a fingerprint of the exact images and labels),
  the seed (the run's own, read from the checkpoint), metrics and times. The run's `summary.json`
  lists its evaluations under `evaluations`, each appended, none lost.
- Each checkpoint carries `checkpoint["cnnlab"]`: the run's seed, data seed, experiment and run
  directory, so an evaluation knows them even for a checkpoint copied elsewhere.
"""

import contextlib
import functools
import hashlib
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from cnnlab.code_version import git_commit
from cnnlab.errors import CnnlabError
from cnnlab.run_dir import EVALUATIONS, claim_evaluation_dir

# the files of the records, readable without torch (the seed launcher reads them); named here too
from cnnlab.summary_files import SUMMARY, locked, read_record, read_summary, update_summary, write_summary  # noqa: F401

CHECKPOINT_KEY = "cnnlab"  # our entry in a Lightning checkpoint
METRIC_PREFIXES = {"fit": ("train/", "val/"), "validate": ("val/",), "test": ("test/",), "predict": ()}


def file_sha256(path: Path | str) -> str:
    """The file's SHA-256, computed once per version of the file in this process: an evaluation of a
    finished run's checkpoint checks it against the record (cnnlab/checkpoints.py) and then records it,
    and a seed worker may do so for many seeds. A rewrite changes the size or the mtime (ns)."""
    stat = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
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


def data_identity(datamodule, split: str | None, evaluated: int | None = None, ordered: bool = True) -> dict:
    """What an evaluation ran on: the DataModule class and settings that choose the data, the split,
    how many samples were evaluated (`size`; `split_size` is the whole split, more where a
    `limit_*_batches` stopped early) and a fingerprint (SHA-256) of exactly those images and labels as
    loaded. Evaluation loaders keep the split's order, so a limited run evaluated its first `size`
    samples; `ordered=False` (several processes, each a strided share) leaves the fingerprint out."""
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
            total = len(labels)
            size = total if evaluated is None else min(evaluated, total)
            identity |= {"size": size, "split_size": total}
            if size == total:
                identity["fingerprint"] = tensors_sha256(images, labels)
            elif ordered:
                identity["fingerprint"] = tensors_sha256(images[:size], labels[:size])
    return identity


def process_identity() -> dict:
    """Which process writes a record: host, pid and (Linux) its start time, so that a later command
    can tell a record whose process is gone (killed) from one still being written."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])  # a zombie has ended; field 22 of stat: start time


def process_gone(identity: dict | None) -> bool:
    """True only where it is certain: the record's process ran on this host and no longer runs."""
    if not identity or identity.get("host") != socket.gethostname() or os.name == "nt":
        return False  # another machine's process, or Windows (os.kill would end it): not known
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    start = identity.get("start")
    return start is not None and _start_time(pid) != start  # ended, and the pid taken by another process


def settle_abandoned(run_dir: Path) -> list[Path]:
    """Mark the records of a run that say `running` but whose process has ended (kill -9, a lost
    node) as interrupted: the run's own record, and each of its evaluations (also listed in the run's
    `evaluations` then). Returns the directories marked."""
    marked = []
    for directory in [run_dir, *sorted((run_dir / EVALUATIONS).glob("*/"))]:
        summary = read_summary(directory)
        if summary.get("status") != "running" or not process_gone(summary.get("process")):
            continue
        why = f"its process (pid {summary['process']['pid']}) ended before the record was finished: killed?"

        def interrupt(record: dict, why: str = why) -> None:
            if record.get("status") == "running":
                record |= {"status": "interrupted", "error": why}

        update_summary(directory, interrupt)
        marked.append(directory)
        if directory != run_dir:
            entry = {k: summary.get(k) for k in ("subcommand", "dir", "checkpoint", "started")}
            entry |= {"status": "interrupted", "error": why}
            update_summary(run_dir, lambda record, entry=entry: record.setdefault("evaluations", []).append(entry))
    return marked


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
        self._evaluation: tuple[Path, Path | None] | None = None  # (its directory, its run) while one runs
        self._evaluated = 0  # samples this process evaluated

    # -- what the record says ----------------------------------------------------------------

    def _dir(self, trainer: Trainer) -> Path:
        return self.directory or Path(trainer.log_dir or trainer.default_root_dir)

    def _evaluation_dirs(self, trainer: Trainer) -> tuple[Path, Path | None]:
        """Where an evaluation's record goes, and the run it belongs to. A plain Trainer that tests
        after fitting logs into the run's own folder: each of its evaluations claims a directory
        `evaluations/<time>-<stage>/` there, so the finished training record is never rewritten."""
        directory = self._dir(trainer)
        if self.directory is None and read_summary(directory).get("kind") == "training":
            return claim_evaluation_dir(directory, self._stage or "evaluation"), directory
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
                offline = getattr(logger, "offline", None)  # cnnlab's logger says; Lightning's keeps it private
                known = None if offline is None else "offline" if offline else "online"
                return {
                    "id": logger.version,
                    "project": logger.name,
                    "entity": getattr(logger, "entity", None),
                    "offline_dir": str(getattr(logger, "offline_dir", None) or "") or None,
                    "dir": logger.save_dir,
                    # online, offline or disabled (cnnlab's logger says); None: not known
                    "mode": getattr(logger, "mode", None) or known,
                    "started": getattr(logger, "started", None),
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
            # fast_dev_run (any truthy value): one batch to see that the code runs, not a model;
            # `--ckpt_path best|last` never takes such a run (cnnlab/checkpoints.py).
            "smoke": bool(trainer.fast_dev_run),
        }

    def _checkpoint_files(self, trainer: Trainer) -> dict[str, dict]:
        """best and last as they are on disk, with their SHA-256: a later load checks the file against
        it. A file whose bytes differ from what this process wrote (AtomicCheckpointIO's digests) is
        left out rather than vouched for."""
        callback = trainer.checkpoint_callback
        written = getattr(trainer.strategy.checkpoint_io, "digests", {})
        files = {}
        for name, path in (
            ("best", getattr(callback, "best_model_path", "")),
            ("last", getattr(callback, "last_model_path", "")),
        ):
            if not path or not Path(path).is_file():
                continue
            digest = file_sha256(path)
            if written.get(str(Path(path).resolve()), digest) == digest:
                files[name] = {"path": str(path), "sha256": digest}
        return files

    # -- fit -------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stage = stage
        self._started = time.time()
        if stage != TrainerFn.FITTING and trainer.is_global_zero:
            self._evaluation_start(trainer, pl_module, stage)

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
                summary |= {k: v for k, v in self.details.items() if k != "resume"}  # the command line, ...
            if self.checkpoint:
                resume = {"from": self.checkpoint, "at": now(), **self.details.get("resume", {})}
                summary.setdefault("resumes", []).append(resume)
                summary.pop("error", None)
                summary.pop("checkpoints", None)  # they change from here on; recorded again when it ends
            # A smoke test resumed in a run writes its one step into the run's last.ckpt: the run is one now.
            summary["smoke"] = bool(summary.get("smoke") or trainer.fast_dev_run)
            summary |= {"status": "running", "process": process_identity(), "wandb": self._wandb(trainer)}

        update_summary(directory, start)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        checkpoint = trainer.checkpoint_callback
        metrics = self._metrics(trainer, "fit")
        seconds = round(time.time() - self._started, 3)
        files = self._checkpoint_files(trainer)

        def finish(summary: dict) -> None:
            summary |= {
                "status": "finished",
                "finished": now(),
                "wandb": self._wandb(trainer),
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "metrics": {**summary.get("metrics", {}), **metrics},
                "fit_seconds": round(summary.get("fit_seconds", 0.0) + seconds, 3),
                "checkpoints": files,
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

    def _evaluation_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A `running` record before the first batch, so that an evaluation killed mid-way leaves a
        record that says so (marked interrupted by the next command on the run: settle_abandoned)."""
        directory, run_dir = self._evaluation = self._evaluation_dirs(trainer)
        self._evaluated = 0
        if run_dir is not None:
            settle_abandoned(run_dir)
        checkpoint = {"path": self.checkpoint}
        if self.checkpoint and Path(self.checkpoint).is_file():
            checkpoint["sha256"] = file_sha256(self.checkpoint)
        record = {
            "kind": "evaluation",
            "subcommand": stage,
            "status": "running",
            "dir": str(directory),
            "run_dir": str(run_dir) if run_dir else None,
            "checkpoint": checkpoint,
            "started": now(),
            "process": process_identity(),
            **self._base(trainer, pl_module),
            **self.details,
        }
        update_summary(directory, lambda summary: summary.update(record))

    def _count(self, trainer: Trainer, batch: Any) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            first = batch[0] if isinstance(batch, list | tuple) else batch
            self._evaluated += len(first)

    def _evaluation_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            return
        # Every rank evaluated its share (each sample once: evaluation samplers do not pad).
        evaluated = int(
            trainer.strategy.reduce(torch.tensor(float(self._evaluated), device=pl_module.device), reduce_op="sum")
        )
        if not trainer.is_global_zero or self._evaluation is None:
            return
        (directory, run_dir), self._evaluation = self._evaluation, None
        datamodule = trainer.datamodule
        split = {"validate": "val", "test": "test", "predict": getattr(datamodule, "predict_split", "test")}[stage]
        limit = getattr(trainer, f"limit_{'val' if stage == 'validate' else stage}_batches", None)
        data = data_identity(datamodule, split, evaluated, ordered=trainer.world_size == 1)
        record = {
            "status": "finished",
            "data": {**data, "limit_batches": limit},
            "metrics": self._metrics(trainer, stage),
            "finished": now(),
            "seconds": round(time.time() - self._started, 3),
            "wandb": self._wandb(trainer),
        }
        summary = update_summary(directory, lambda summary: summary.update(record))
        if run_dir is not None and run_dir.resolve() != directory.resolve():
            entry = {k: summary.get(k) for k in ("subcommand", "status", "dir", "checkpoint", "metrics", "finished")}
            entry["seconds"] = summary.get("seconds")
            entry["data"] = {k: data.get(k) for k in ("split", "size", "split_size", "fingerprint", "data_dir")}
            update_summary(run_dir, lambda summary: summary.setdefault("evaluations", []).append(entry))

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(trainer, batch)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(trainer, batch)

    @override
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(trainer, batch)

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
        files = self._checkpoint_files(trainer) if fitting else {}

        def fail(summary: dict) -> None:
            if not summary:
                summary |= {"kind": "training" if fitting else "evaluation", "started": now()}
                summary |= self._base(trainer, pl_module)
                if not fitting:
                    summary |= {"subcommand": self._stage, "checkpoint": {"path": self.checkpoint}}
            summary |= {"status": status, "error": error, "finished": now()}
            if files:
                summary["checkpoints"] = files

        if fitting:
            directory, run_dir = self._dir(trainer), None
        else:
            (directory, run_dir), self._evaluation = self._evaluation or self._evaluation_dirs(trainer), None
        try:
            update_summary(directory, fail)
            if not fitting and run_dir is not None and run_dir.resolve() != directory.resolve():
                entry = {"subcommand": self._stage, "status": status, "dir": str(directory), "error": error}
                entry |= {"checkpoint": {"path": self.checkpoint}, "finished": now()}
                update_summary(run_dir, lambda summary: summary.setdefault("evaluations", []).append(entry))
        except (OSError, CnnlabError) as err:
            # A full disk may not take even the record; the exception that stopped the run is what
            # the user must see, with a word that the record could not say it.
            rank_zero_warn(f"cnnlab: the record in {directory} could not be updated to say {status} ({err}).")
