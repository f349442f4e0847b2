"""cnnlab's LightningCLI: any LightningModule/DataModule of the project from YAML, one directory per
run, summary.json at the end of fit and test, and one-paragraph errors instead of tracebacks.

Run directories: `<trainer.default_root_dir>/<experiment>/<YYYYmmdd-HHMMSS>-seed<seed>/` holds
config.yaml, checkpoints/ (best.ckpt, last.ckpt), logger files, figures and summary.json.
`test`/`validate`/`predict` with a checkpoint of such a run write into `<run>/<subcommand>/`
and add their metrics to the run's summary.json.
"""

import inspect
import json
import os
import secrets
import subprocess
import sys
import time
import warnings
from datetime import datetime
from functools import cache, partial
from pathlib import Path

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from callbacks.nonfinite_loss import NonFiniteLossGuard
from callbacks.prediction_writer import PredictionWriter
from callbacks.schedule_guard import ScheduleLengthGuard
from cnnlab.errors import CnnlabError

DEFAULT_SEED = 1234
DEFAULT_ROOT = "runs"
RUN_DIR_ENV = "CNNLAB_RUN_DIR"  # rank zero hands its run directory to the DDP processes it starts
OUTPUT_DIR_ENV = "CNNLAB_OUTPUT_DIR"
SUMMARY = "summary.json"
LINKS = ("image_shape", "num_classes")  # DataModule property -> model argument of the same name

# Loggers share the run directory with config.yaml and summary.json on purpose; Lightning's
# CSV logger warns about any non-empty directory, although it only rewrites its own files.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


def launched_as_rank_zero() -> bool:
    """Best knowledge before the strategy starts: not a DDP child, not another node's process."""
    for var in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "RANK"):
        if int(os.environ.get(var, "0") or 0) != 0:
            return False
    return True


def new_run_dir(parent: Path, seed: int) -> Path:
    """Create and return a directory no other run has: timestamp and seed, -2, -3... on a clash."""
    stem = f"{datetime.now():%Y%m%d-%H%M%S}-seed{seed}"
    for attempt in range(1, 1000):
        path = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise CnnlabError(f"Could not create a new run directory under {parent}: 999 runs started this second.")


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


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), if it is one of ours."""
    run = checkpoint.resolve().parent.parent
    return run if checkpoint.resolve().parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


def read_summary(run_dir: Path) -> dict:
    path = run_dir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def _plain(value):
    """A parsed or saved hyperparameter as plain data (namespaces as dicts, tuples as lists)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def saved_as_parsed(config) -> bool:
    """Whether the checkpoint at `config.ckpt_path` saved exactly the model class and arguments that
    `config` holds (the DataModule-linked ones aside: they come from the data either way)."""
    import torch

    try:
        checkpoint = torch.load(config.ckpt_path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise CnnlabError(
            f"--ckpt_path {config.ckpt_path} cannot be read as a checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no message'}). It may have been cut short by an "
            "interrupted save, or not be a checkpoint at all; give another (e.g. the run's last.ckpt) or train again."
        ) from err
    saved = dict(checkpoint.get("hyper_parameters") or {})
    saved.pop("_instantiator", None)
    if saved.pop("_class_path", None) != config.model.get("class_path"):
        return False
    parsed = _plain(config.model.get("init_args") or {})
    for name in LINKS:
        saved.pop(name, None)
        parsed.pop(name, None)
    return _plain(saved) == parsed


def write_summary(run_dir: Path, summary: dict) -> None:
    tmp = run_dir / f".{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    tmp.replace(run_dir / SUMMARY)


class RunConfigSaver(SaveConfigCallback):
    """Lightning's config.yaml in the run directory, and the same resolved config attached to
    the W&B run (as its config and as a file)."""

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        # Lightning's, saving without checking the values again: they were checked when parsed, and
        # the check is most of a save's cost (paid by every run, twice per seed of a sweep).
        self.parser.save = partial(type(self.parser).save, self.parser, skip_check=True)
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            del self.parser.save

    @override
    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # dumped here only: a dump costs a large part of a warm seed's overhead (cnnlab-seeds)
                config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
                run = logger.experiment
                run.config.update(
                    {"seed": config.get("seed_everything"), "git_commit": git_commit(), "cnnlab": config},
                    allow_val_change=True,
                )
                path = Path(trainer.log_dir, self.config_filename)
                run.save(str(path), base_path=str(path.parent), policy="now")


class CnnlabCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, with cnnlab's run directories."""

    def __init__(self, args=None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault(
            "trainer_defaults",
            {"logger": {"class_path": "cnnlab.wandb_logger.WandbLogger"}, "default_root_dir": DEFAULT_ROOT},
        )
        kwargs.setdefault("parser_kwargs", {"parser_mode": "yaml"})
        super().__init__(args=args, run=run, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="Name of the experiment, the folder its runs go in (default: the first --config file's name).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # What data and model share is said once, by the DataModule.
        for name in LINKS:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    # -- before anything is built: names, seeds, directories ---------------------------------

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config  # run=False has no subcommand
        if config.get("seed_everything") is False:
            raise CnnlabError(
                "seed_everything is false, which would leave the run unseeded and its seed unrecorded. "
                "Give an integer (the model seed: initialisation, dropout, augmentation, shuffling), or "
                "true to draw a random one that is recorded in config.yaml and summary.json."
            )
        self.experiment = config.get("experiment") or self._experiment_name(config)
        self.root = Path(config.trainer.get("default_root_dir") or DEFAULT_ROOT)
        self.reused_run_dir = self._resolve_checkpoint(config)

    def _experiment_name(self, config) -> str:
        files = config.get("config") or []
        if files:
            return Path(str(files[0])).stem
        return str(config.model.class_path).rsplit(".", 1)[-1].lower()

    def _resolve_checkpoint(self, config) -> Path | None:
        """Turn `--ckpt_path last|best` into a file of this experiment's latest run, and return the
        run directory a checkpoint belongs to (outputs go there), or None for a new directory."""
        ckpt = config.get("ckpt_path")
        if not ckpt:
            return None
        if ckpt in ("last", "best"):
            runs = sorted(
                (p for p in (self.root / self.experiment).glob("*/checkpoints/last.ckpt")),
                key=lambda p: p.stat().st_mtime,
            )
            if not runs:
                raise CnnlabError(
                    f"--ckpt_path {ckpt}: no earlier run of '{self.experiment}' under {self.root}/ has a "
                    f"checkpoint ({self.root}/{self.experiment}/*/checkpoints/last.ckpt). Train one first "
                    "(python train.py fit --config ...), or give the checkpoint's path."
                )
            run = runs[-1].parent.parent
            path = run / "checkpoints" / f"{ckpt}.ckpt"
            best = read_summary(run).get("best_checkpoint")
            if ckpt == "best" and best and Path(best).is_file():
                path = Path(best)
            if not path.is_file():
                raise CnnlabError(f"--ckpt_path {ckpt}: the latest run {run} has no {path.name}.")
            config.ckpt_path = str(path)
            return run
        path = Path(ckpt)
        if not path.is_file():
            raise CnnlabError(
                f"--ckpt_path {ckpt}: no such file. Give a checkpoint file (e.g. "
                f"{self.root}/{self.experiment}/<run>/checkpoints/best.ckpt), or 'last' / 'best' for the "
                f"latest run of '{self.experiment}'."
            )
        return run_dir_of(path)

    @override
    def _parse_ckpt_path(self) -> None:
        # Lightning re-parses the whole config with the checkpoint's hyperparameters, so that a
        # model is rebuilt with the arguments it was trained with. When the checkpoint saved exactly
        # the arguments already parsed (`test --ckpt_path best` after a fit of the same config, every
        # seed of cnnlab-seeds), that changes nothing and costs a third of a warm seed's overhead.
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else None
        if config is None or not config.get("ckpt_path") or not Path(config.ckpt_path).is_file():
            return
        if not saved_as_parsed(config):
            super()._parse_ckpt_path()

    @override
    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand or "fit"
        config = self._config
        seed = config.seed_everything
        if os.environ.get(RUN_DIR_ENV) and not launched_as_rank_zero():
            run_dir, output_dir = Path(os.environ[RUN_DIR_ENV]), Path(os.environ[OUTPUT_DIR_ENV])
        elif self.reused_run_dir is not None:
            run_dir = self.reused_run_dir
            output_dir = run_dir if subcommand == "fit" else run_dir / subcommand
        elif launched_as_rank_zero():
            run_dir = output_dir = new_run_dir(self.root / self.experiment, seed)
        else:  # another node's process: rank zero's directory is the one that counts
            run_dir = output_dir = self.root / self.experiment / "nonzero-rank"
        os.environ[RUN_DIR_ENV], os.environ[OUTPUT_DIR_ENV] = str(run_dir), str(output_dir)
        self.run_dir, self.output_dir = run_dir, output_dir
        if launched_as_rank_zero():
            output_dir.mkdir(parents=True, exist_ok=True)
            print(f"cnnlab: {subcommand} '{self.experiment}' (seed {seed}) -> {output_dir}", file=sys.stderr)

        if self._resuming and launched_as_rank_zero():
            self._keep_earlier_metrics(run_dir)
        config.trainer.default_root_dir = str(output_dir)
        config.checkpoint.dirpath = str(run_dir / "checkpoints")
        self._point_loggers_at(config, subcommand, output_dir)
        self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": output_dir != run_dir or self._resuming}

    @staticmethod
    def _keep_earlier_metrics(run_dir: Path) -> None:
        """Lightning's CSV logger deletes an existing metrics.csv when it starts; a resumed run keeps
        the killed run's rows as metrics-part<k>.csv instead."""
        metrics = run_dir / "metrics.csv"
        if metrics.is_file():
            k = 1 + len(list(run_dir.glob("metrics-part*.csv")))
            metrics.rename(run_dir / f"metrics-part{k}.csv")

    @override
    def _dump_config(self) -> None:
        """Lightning's dump of the config for the checkpoints' hyperparameters, without checking the
        values again (they were checked when parsed; the check is most of a dump's cost)."""
        if hasattr(self, "config_dump"):
            return
        dump = self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml", skip_check=True)
        self.config_dump = yaml.safe_load(dump)
        if "subcommand" in self.config:
            self.config_dump = self.config_dump[self.config.subcommand]

    @override
    def after_instantiate_classes(self) -> None:
        # Links applied at instantiation reach the model but not the parsed config; write them in
        # so summary.json shows the shapes that ran, not the signature's defaults.
        # The dump made while instantiating gets the same values, instead of a second dump.
        init_args = self._config.model.get("init_args")
        dumped = (self.__dict__.get("config_dump") or {}).get("model", {}).get("init_args")
        for name in LINKS:
            if init_args is not None and name in init_args and self.datamodule is not None:
                init_args[name] = value = getattr(self.datamodule, name)
                if isinstance(dumped, dict):
                    dumped[name] = list(value) if isinstance(value, tuple) else value
        # LightningCLI records a linked value in the model's hparams even where the model has no such
        # argument (num_classes for an autoencoder); saved in a checkpoint, it would break
        # load_from_checkpoint(path) and `test --ckpt_path` with an unexpected keyword argument.
        if self.model is not None:
            params = inspect.signature(type(self.model).__init__).parameters
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                for name in LINKS:
                    if name not in params:
                        self.model.hparams.pop(name, None)

    @property
    def _config(self):
        """This run's config: the subcommand's, or the root one when the CLI was built with run=False."""
        return self.config[self.subcommand] if self.subcommand else self.config

    @property
    def _resuming(self) -> bool:
        return self.subcommand in ("fit", None) and self.reused_run_dir is not None

    def _point_loggers_at(self, config, subcommand: str, output_dir: Path) -> None:
        """Every logger writes into the output directory, so `trainer.log_dir` is that directory."""
        loggers = config.trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        previous = read_summary(self.run_dir).get("wandb", {})
        for logger in loggers:
            if not hasattr(logger, "class_path"):
                continue
            args = logger.init_args
            if "save_dir" in args or hasattr(args, "save_dir"):
                args.save_dir = str(output_dir)
            name = str(logger.class_path).rsplit(".", 1)[-1]
            if name in ("CSVLogger", "TensorBoardLogger"):
                args.name, args.version = "", ""
            if name == "WandbLogger":
                args.name = args.get("name") or f"{self.experiment}/{self.run_dir.name}"
                args.group = args.get("group") or self.experiment
                args.job_type = args.get("job_type") or subcommand
                if not args.get("version"):
                    # Known before W&B starts, so summary.json can name the run even if it is killed;
                    # test and resume log into the run that trained. Under `wandb agent` W&B ignores
                    # any id but the agent's (WANDB_RUN_ID), so that one is the run's.
                    args.version = previous.get("id") or os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
                    if previous.get("id"):
                        logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "resume": "allow"}

    # -- trainer ---------------------------------------------------------------------------------

    @override
    def instantiate_trainer(self, **kwargs):
        logger = self._get(self.config_init, "trainer").get("logger")
        callbacks = [NonFiniteLossGuard(), ScheduleLengthGuard(), PredictionWriter()]
        if logger is not False and logger != []:
            callbacks.append(LearningRateMonitor())
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        return super().instantiate_trainer(**kwargs)

    def fit(self, **kwargs) -> None:
        self._recording_failure(self.trainer.fit, **kwargs)

    def validate(self, **kwargs) -> None:
        self._recording_failure(self.trainer.validate, **kwargs)

    def test(self, **kwargs) -> None:
        self._recording_failure(self.trainer.test, **kwargs)

    def predict(self, **kwargs) -> None:
        # Predictions go to files through PredictionWriter; keeping them all in memory too would
        # defeat it on a large split.
        kwargs["return_predictions"] = False
        self._recording_failure(self.trainer.predict, **kwargs)

    def _recording_failure(self, run, **kwargs) -> None:
        """Run a Trainer method; if it fails, say so in summary.json (a seed study counts failures
        from there) and re-raise."""
        failed = True
        try:
            run(**kwargs)
            failed = False
        except BaseException as err:
            status = "interrupted" if isinstance(err, KeyboardInterrupt | SystemExit) else "failed"
            prefix = "" if self.subcommand in ("fit", None) else f"{self.subcommand}_"
            error = f"{type(err).__name__}: {err}"[:2000]
            self._update_summary((), {f"{prefix}status": status, f"{prefix}error": error})
            raise
        finally:
            self._finish_wandb(failed)

    def _finish_wandb(self, failed: bool) -> None:
        """Close this run's W&B run now, not at interpreter exit: the next run in the same process (a
        seed launcher's worker, a test) would otherwise log into it."""
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
                logger.experiment.finish(exit_code=1 if failed else 0)

    # -- summary.json ------------------------------------------------------------------------

    def before_fit(self) -> None:
        self._started = time.time()
        extra = {"status": "running"}
        if self._resuming:
            ckpt = self._config.ckpt_path
            extra |= {"resumed_from": ckpt, "resumed_at_step": self._checkpoint_step(ckpt)}
        self._update_summary((), extra)

    def before_validate(self) -> None:
        self._started = time.time()

    before_test = before_validate

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        extra = {"status": "finished", "epochs": self.trainer.current_epoch, "global_step": self.trainer.global_step}
        if checkpoint is not None:
            score = checkpoint.best_model_score
            extra |= {
                "best_checkpoint": checkpoint.best_model_path or None,
                "best_score": None if score is None else float(score),
                "monitor": checkpoint.monitor,
                "last_checkpoint": checkpoint.last_model_path or None,
            }
        self._update_summary(("train/", "val/"), extra, seconds=True)

    def after_validate(self) -> None:
        self._update_summary(("val/",), {}, seconds=True)

    def after_test(self) -> None:
        extra = {"test_status": "finished", "test_checkpoint": self._config.get("ckpt_path")}
        self._update_summary(("test/",), extra, seconds=True)

    @staticmethod
    def _checkpoint_step(path: str) -> int | None:
        import torch

        return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step")

    def _update_summary(self, prefixes: tuple[str, ...], extra: dict, seconds: bool = False) -> None:
        """Merge this subcommand's outcome into `<run>/summary.json` (rank zero only)."""
        if not (self.trainer.is_global_zero and launched_as_rank_zero()):
            return
        summary = read_summary(self.run_dir)
        metrics = {
            key: float(value)
            for key, value in self.trainer.callback_metrics.items()
            if prefixes and key.startswith(prefixes) and value.numel() == 1
        }
        self._dump_config()
        config = self._config
        data_args = config.data.get("init_args") if config.get("data") else None
        summary |= {
            "experiment": self.experiment,
            "run_dir": str(self.run_dir),
            "seed": config.seed_everything,
            "data_seed": data_args.get("data_seed") if data_args else None,
            "git_commit": git_commit(),
            "metrics": {**summary.get("metrics", {}), **metrics},
            **extra,
        }
        if seconds:
            summary[f"{self.subcommand or 'fit'}_seconds"] = round(time.time() - self._started, 3)
        if self.subcommand in ("fit", None) or "config" not in summary:
            summary["config"] = self.config_dump
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                summary["wandb"] = {"id": logger.version, "project": logger.name, "dir": logger.save_dir}
        write_summary(self.run_dir, summary)


def main(args=None) -> None:
    """Entry point of train.py: run the CLI; print a CnnlabError as its paragraph and exit 2."""
    try:
        CnnlabCLI(args=args)
    except CnnlabError as err:
        if os.environ.get("CNNLAB_DEBUG"):
            raise
        print(f"\ncnnlab: error: {err}\n(set CNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
