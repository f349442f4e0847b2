"""cnnlab's LightningCLI: any LightningModule and DataModule of the project from YAML, a directory per
run and per evaluation (cnnlab/run_dir.py), records that a later command never rewrites
(cnnlab/records.py), a checkpoint that must agree with the config (cnnlab/checkpoints.py), and
one-paragraph errors (exit 2) instead of tracebacks. docs/design.md describes the whole.
"""

import contextlib
import copy
import errno
import inspect
import os
import shlex
import signal
import sys
import warnings
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentError, DefaultHelpFormatter, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from callbacks.last_checkpoint import RunCheckpoint
from callbacks.nonfinite_loss import NonFiniteLossGuard
from callbacks.prediction_writer import PredictionWriter
from callbacks.schedule_guard import ScheduleLengthGuard
from cnnlab import checkpoints
from cnnlab.atomic import disk_full, write_atomically
from cnnlab.checkpoint_io import AtomicCheckpointIO
from cnnlab.closing import closing_block
from cnnlab.command_line import (
    environment_settings,
    explicit_settings,
    integer_limits,
    located_configs,
    parse_error_paragraph,
)
from cnnlab.environment import DEBUG_ENV
from cnnlab.errors import CnnlabError
from cnnlab.lightning_internals import CnnlabInternals, TimedProgressBar
from cnnlab.protocol import check_configuration
from cnnlab.records import RunRecord, git_commit, read_summary
from cnnlab.run_dir import (
    CHECKPOINTS,
    RUNS_ROOT,
    claim_evaluation_dir,
    claim_run_dir,
    claim_standalone_dir,
    hand_down,
    hold_run,
    inherited_dirs,
    launched_as_rank_zero,
    let_go,
    release,
)
from cnnlab.seeds.sweep import wandb_labels_from_env
from cnnlab.shell_paths import train_command
from cnnlab.wandb_logger import WandbLogger
from lightning_modules.optimization import unbounded_plan

# Lightning 2.6 calls a torch.utils._pytree function that torch 2.10+ deprecates, on every run; nothing a
# user can change. Silenced here, at the one message, until Lightning catches up.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

DEFAULT_SEED = 1234
DESCRIPTION = """cnnlab: train, evaluate and compare convolutional networks (classifier, AutoEncoder, VAE,
UNet, anomaly detectors) on MNIST and CIFAR-10, from one YAML config per experiment.

Each fit gets its own run directory, runs/<experiment>/<date>-<time>-seed<seed>/, holding
config.yaml (re-runs the run), summary.json (its record), checkpoints/ and figures/; each
validate/test/predict of its checkpoint writes a record of its own under the run's evaluations/.
--ckpt_path best|last picks the newest finished run of the experiment. Settings also come from
environment variables: PL_FIT__TRAINER__MAX_EPOCHS=3 sets trainer.max_epochs for fit where no
--config file or argument sets it.

examples:
  python train.py fit --config configs/mnist_classifier.yaml
  python train.py test --config configs/mnist_classifier.yaml --ckpt_path best
  python train.py fit --config configs/mnist_vae.yaml --config configs/trainer/debug.yaml
  python train.py fit --config configs/mnist_classifier.yaml --config configs/trainer/early_stopping.yaml
  python train.py fit --help          (every setting of fit)
  cnnlab-seeds run --name mnist-cnn --config configs/mnist_classifier.yaml --seeds 1-10

docs/guide.md walks through it; docs/design.md says how it is built."""
LINKS = checkpoints.LINKED  # DataModule property -> model argument of the same name
WANDB_LOGGER = "cnnlab.wandb_logger.WandbLogger"


def say(text: str) -> None:
    if launched_as_rank_zero():
        print(f"cnnlab: {text}", file=sys.stderr, flush=True)


class HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with cnnlab's description and examples kept as written."""


class ConfigFile(Callback):
    """The resolved config as `config.yaml` in the command's directory (an unfinished run resumed in
    place keeps the one it started with), and attached to the W&B run."""

    def __init__(self, write: bool) -> None:
        self.write = write
        self.text, self.values = "", {}

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir, "config.yaml")
        if self.write and not path.exists():
            write_atomically(path, self.text.encode())
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.attach_config(self.text, self.values)


class CnnlabCLI(CnnlabInternals):
    """LightningCLI in subclass mode for model and data, with cnnlab's run directories and records."""

    def __init__(self, args=None, run: bool = True, **kwargs) -> None:
        given = [str(a) for a in (sys.argv[1:] if args is None else args)]
        self.argv = located_configs(given)
        if self.argv != given:  # a --config found with the installed package (cnnlab used outside the checkout)
            if args is None:
                sys.argv[1:] = self.argv
            else:
                args = self.argv
        kwargs.setdefault("save_config_callback", None)  # ConfigFile writes config.yaml (see instantiate_trainer)
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("trainer_defaults", {"logger": {"class_path": WANDB_LOGGER}, "default_root_dir": RUNS_ROOT})
        # default_env: LightningCLI's environment overrides (PL_FIT__TRAINER__MAX_EPOCHS=3), as its users expect.
        kwargs.setdefault(
            "parser_kwargs",
            {
                "parser_mode": "yaml",
                "exit_on_error": False,
                "default_env": True,
                "description": DESCRIPTION,
                "formatter_class": HelpFormatter,
            },
        )
        super().__init__(args=args, run=run, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        """Only the subcommand this command runs gets a parser: each one costs jsonargparse a pass over
        every class signature (about a second of start-up for the four). `train.py --help`, or a
        mistyped subcommand, sees them all."""
        every = LightningCLI.subcommands()
        chosen = self.argv[0] if self.argv else None
        return {chosen: every[chosen]} if chosen in every else every

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="Name of the experiment, the folder its runs go in (default: the first --config file's name).",
        )
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--early_stopping.patience",
            type=int | None,
            default=None,
            help="Stop a fit after this many validations without improvement of checkpoint.monitor (in its "
            "checkpoint.mode), with Lightning's EarlyStopping; unset: no early stopping "
            "(configs/trainer/early_stopping.yaml sets it).",
        )
        parser.add_argument(
            "--early_stopping.min_delta",
            type=float,
            default=0.0,
            help="The smallest change of checkpoint.monitor that counts as an improvement for early stopping.",
        )
        # What data and model share is said once, by the DataModule.
        for name in LINKS:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    # -- parsing: names, seeds and the checkpoint, before anything is built ----------------------

    @property
    def _config(self) -> Namespace:
        """This command's config: the subcommand's, or the root one when the CLI was built with run=False."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:  # exit_on_error is off: jsonargparse's report becomes one paragraph
            raise CnnlabError(parse_error_paragraph(str(err), self.argv)) from None
        subcommand = self.config.get("subcommand")
        config = self._config
        if config.get("seed_everything") is False:
            raise CnnlabError(
                "seed_everything is false, which would leave the run unseeded and its seed unrecorded. "
                "Give an integer (the model seed: initialisation, dropout, augmentation, shuffling), or "
                "true to draw a random one that is recorded in config.yaml and summary.json."
            )
        # PL_* variables that took effect count as given explicitly (the command line's, for a checkpoint's
        # arguments); those a --config file or an argument overrode are left out, as jsonargparse ranks them.
        self.environment, ignored = environment_settings(subcommand, self.argv, config)
        if ignored:
            say(
                f"ignored: {', '.join(ignored)} (not a setting of {subcommand}, or one a --config file or an argument "
                f"sets). `python train.py {subcommand} --help` names the variables it reads."
            )
        self.from_environment = dict(self.environment.values())
        self.explicit = {**self.from_environment, **explicit_settings(self.argv)}
        self.integer_limits = integer_limits(config, explicit_settings(self.argv), self.from_environment)
        self.experiment = config.get("experiment") or self._experiment_name(config)
        self.root = Path(config.trainer.get("default_root_dir") or RUNS_ROOT)
        self.checkpoint: checkpoints.Checkpoint | None = None
        self.agreement = checkpoints.Agreement()
        check_trainer_settings(config)
        if subcommand and config.get("ckpt_path"):
            path, picked = checkpoints.resolve(config.ckpt_path, self.root, self.experiment, subcommand)
            if picked:  # best / last: which run they meant
                say(picked)
            config.ckpt_path = str(path)
            self.checkpoint = checkpoints.read(path)
            self.agreement = checkpoints.reconcile(config, self.checkpoint, self.explicit, subcommand)
            if subcommand != "fit":
                checkpoints.reconcile_task(config, self.checkpoint, self.explicit, self.agreement)
            self._seed_from_checkpoint(config, subcommand)
            unfinished = self.checkpoint.run_dir is not None and not self.checkpoint.run_finished
            if subcommand == "fit" and config.trainer.get("fast_dev_run") and unfinished:
                raise CnnlabError(
                    f"fast_dev_run with --ckpt_path {self.checkpoint.path}: a smoke test would resume the unfinished "
                    f"run {self.checkpoint.run_dir} in place and write its one step into the run's last.ckpt. Leave "
                    "--ckpt_path out for a smoke test (a run of its own), or fast_dev_run out to resume the run."
                )
            if subcommand == "fit":
                checkpoints.check_schedule_plan(config, self.checkpoint)

    def _experiment_name(self, config) -> str:
        files = config.get("config") or []
        if files:
            return Path(str(files[0])).stem
        return str(config.model.class_path).rsplit(".", 1)[-1].lower()

    def _seed_from_checkpoint(self, config: Namespace, subcommand: str) -> None:
        """A command with a checkpoint runs with the seed the checkpoint was trained with, unless a seed
        is given on the command line (an evaluation then records it; a resume of the run refuses it)."""
        seed = self.checkpoint.seed
        if seed is None:
            return
        given = self.explicit.get("seed_everything")
        if given is None:
            config.seed_everything = seed
        elif subcommand == "fit" and given != str(seed):
            raise CnnlabError(
                f"--seed_everything {given} differs from the seed {seed} the checkpoint {self.checkpoint.path} was "
                "trained with; a resumed run keeps its seed. Leave --seed_everything out to resume, or start a "
                "new run with the other seed."
            )

    # -- directories and loggers (after the seed is set) -----------------------------------------

    @property
    def resuming_in_place(self) -> bool:
        """fit --ckpt_path of an unfinished run of ours: it continues in its own directory."""
        ckpt = self.checkpoint
        return self.subcommand == "fit" and ckpt is not None and ckpt.run_dir is not None and not ckpt.run_finished

    @override
    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand or "fit"
        config = self._config
        seed = config.seed_everything
        ckpt = self.checkpoint
        inherited = inherited_dirs()
        # Only the process that writes the records claims a directory; a rank started by a cluster's
        # launcher beside it (no directory handed down) writes none, so it names one without making it.
        claim = {"create": launched_as_rank_zero()}
        self.claimed: Path | None = None
        if inherited is not None:
            run_dir, output_dir = inherited
        elif subcommand == "fit":
            if self.resuming_in_place:
                run_dir = ckpt.run_dir
            else:
                run_dir = self.claimed = claim_run_dir(self.root / self.experiment, seed, **claim)
            output_dir = run_dir
        elif ckpt is not None and ckpt.run_dir is not None:
            run_dir = ckpt.run_dir
            output_dir = self.claimed = claim_evaluation_dir(ckpt.run_dir, subcommand, **claim)
        else:  # an evaluation of fresh weights or of a checkpoint from elsewhere: a record of its own
            run_dir = None
            output_dir = self.claimed = claim_standalone_dir(self.root / self.experiment, seed, subcommand, **claim)
        self.run_dir, self.output_dir = run_dir, output_dir
        # config.yaml re-runs the run: it keeps these as the user gave them, not as placed here.
        self.placements = {
            "trainer.default_root_dir": config.trainer.get("default_root_dir"),
            "checkpoint.dirpath": config.checkpoint.get("dirpath"),
        }
        self.held = None
        if subcommand == "fit" and inherited is None and launched_as_rank_zero():
            self.held = hold_run(run_dir)
        if ckpt is not None and ckpt.run_dir is not None and subcommand != "fit":
            recorded = ckpt.meta.get("experiment") or read_summary(ckpt.run_dir).get("experiment")
            self.experiment = recorded or self.experiment
        hand_down(run_dir or output_dir, output_dir)
        config.trainer.default_root_dir = str(output_dir)
        config.checkpoint.dirpath = str((run_dir or output_dir) / CHECKPOINTS)
        self._point_loggers_at(config, subcommand, output_dir)

    def _point_loggers_at(self, config: Namespace, subcommand: str, output_dir: Path) -> None:
        """Every logger writes into the output directory, so `trainer.log_dir` is that directory."""
        loggers = config.trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        self.placements["trainer.logger"] = [
            logger.init_args.clone().as_dict() if hasattr(logger, "class_path") else None for logger in loggers
        ]
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
                self._name_wandb_run(logger, args, subcommand)

    def _name_wandb_run(self, logger: Namespace, args: Namespace, subcommand: str) -> None:
        """One W&B run per training run, grouped by experiment (by sweep for cnnlab-seeds); W&B's own
        WANDB_RUN_GROUP, WANDB_JOB_TYPE and WANDB_TAGS apply where cnnlab would choose. A resumed run logs
        into its own W&B run, and so does an evaluation of one of its checkpoints: it resumes the run by
        the id in the run's summary.json, with its name and labels, and its keys go beside the
        training's (cnnlab/wandb_logger.py, `evaluation`). An evaluation on other data than the run was
        trained on (a `--data.*` setting on the command line that changes it), or of a run without a
        W&B run, is a W&B run of its own (job type validate/test/predict) naming the training run. Under
        `wandb agent` W&B ignores any id but the agent's (WANDB_RUN_ID), so that one is the run's."""
        run = self.run_dir or self.output_dir
        if subcommand != "fit" and self.run_dir is not None and self.checkpoint is not None:
            summary = read_summary(self.run_dir)
            training = training_wandb_run(summary)
            apart = self._evaluated_apart(summary) if training is not None else []
            if training is not None and not apart:
                for key in ("name", "group", "job_type", "tags", "entity", "project"):
                    if training.get(key) is not None:
                        args[key] = training[key]
                # The run's own test of its best checkpoint is its `test/*`; any other checkpoint's keys
                # are named after the checkpoint (`last/test/acc`), so a later test never overwrites them.
                best = summary.get("best_checkpoint")
                is_best = best is not None and Path(best).resolve() == Path(self.checkpoint.path).resolve()
                args.evaluation = subcommand if is_best else f"{Path(self.checkpoint.path).stem}/{subcommand}"
                args.version = training["id"]
                logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "resume": "allow"}
                return
            if training is not None:
                say(
                    f"this {subcommand} gets a W&B run of its own (job type {subcommand}), not {self.run_dir.name}'s: "
                    f"{'; '.join(apart)}."
                )
            else:
                say(
                    f"this {subcommand} gets a W&B run of its own (job type {subcommand}): {self.run_dir.name} logged "
                    "no W&B run (W&B disabled, or another logger) for it to log into."
                )
        label = run.name if self.output_dir == run else f"{run.name}/{self.output_dir.name}"
        labels = wandb_labels_from_env()  # a seed of cnnlab-seeds: the sweep's group, job type and tags
        args.name = args.get("name") or f"{self.experiment}/{label}"
        args.group = args.get("group") or labels.get("group") or os.environ.get("WANDB_RUN_GROUP") or self.experiment
        job_type = labels.get("job_type") if subcommand == "fit" else None
        args.job_type = args.get("job_type") or job_type or os.environ.get("WANDB_JOB_TYPE") or subcommand
        if labels.get("tags") and not args.get("tags"):  # the sweep's tags, and WANDB_TAGS beside them
            extra = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
            args.tags = [*labels["tags"], *(t for t in extra if t not in labels["tags"])]
        if not args.get("version"):
            previous = (read_summary(run).get("wandb") or {}) if self.resuming_in_place else {}
            args.version = previous.get("id") or os.environ.get("WANDB_RUN_ID") or None
            if previous.get("id"):
                logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "resume": "allow"}

    def _evaluated_apart(self, summary: dict) -> list[str]:
        """Why an evaluation of a run's checkpoint must not log into the run's W&B run: the run is not
        finished (a live fit logs into it; a failed one would be marked finished), the data or the model
        arguments differ from what it was trained with (its results are not the run's)."""
        reasons = []
        if summary.get("status") != "finished":
            reasons.append(f"the run is {summary.get('status') or 'without a record'}, not finished")
        changed = other_data((summary.get("config") or {}).get("data") or {}, self._config.get("data"))
        if changed:
            reasons.append(f"it runs on other data than the run was trained on ({', '.join(changed)})")
        applied = self.agreement.record().get("applied") or {}
        if applied:
            reasons.append(f"it changes model arguments ({', '.join(sorted(applied))})")
        return reasons

    # -- the trainer and its records -------------------------------------------------------------

    @override
    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer_config = (
            self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        )
        for name in self.integer_limits:
            trainer_config[name] = int(trainer_config[name])
        if self.subcommand == "predict":
            drop_idle_wandb(trainer_config)
        logger = trainer_config.get("logger")
        evaluation = self.subcommand not in ("fit", None)
        self.record = RunRecord(
            directory=self.output_dir,
            run_dir=self.run_dir if evaluation else None,
            experiment=self.experiment,
            seed=self._config.seed_everything,
            checkpoint=self._config.get("ckpt_path"),
            details=self._record_details(),
        )
        self.config_file = ConfigFile(write=not self.resuming_in_place)
        # Only what the subcommand uses: every callback costs each training step a call per hook.
        callbacks: list[Callback] = [self.record, self.config_file]
        if self.subcommand in ("fit", None):
            callbacks += [NonFiniteLossGuard(), ScheduleLengthGuard()]
            callbacks += early_stopping(self._config)
            if logger is not False and logger != []:
                callbacks.append(LearningRateMonitor())
            if self.agreement.training_changed:
                callbacks.append(checkpoints.ResumeChanges(self.agreement.applied))
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter())
        given = trainer_config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in given
        ):
            callbacks.append(TimedProgressBar())  # redrawn on a clock, not every step (lightning_internals.py)
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        return super().instantiate_trainer(**kwargs, plugins=with_atomic_checkpoints(trainer_config.get("plugins")))

    def _record_details(self) -> dict:
        details = {
            "command": shlex.join([*train_command(), *self.argv]),
            "overrides": self.explicit,  # the settings given on the command line or as PL_* variables
        }
        if self.environment:  # the PL_* variables that took effect
            details["environment_overrides"] = {name: value for name, (_, value) in self.environment.items()}
        changes = self.agreement.record()
        if self.subcommand == "fit" and self.checkpoint is not None:
            details["resume"] = {"at_step": self.checkpoint.global_step, "command": details["command"], **changes}
        elif changes:
            details["model_arguments"] = changes
        if self.checkpoint is not None and self.subcommand != "fit":
            details["training_seed"] = self.checkpoint.seed
        return details

    @contextlib.contextmanager
    def _refused_leaves_nothing(self):
        """A command refused after it claimed its directory (a setting a class rejects, weights that do
        not fit) removes the directory again, as long as nothing was written into it."""
        try:
            yield
        except BaseException:
            let_go(self.held)
            if self.claimed is not None:
                release(self.claimed, stop=self.root.resolve().parent)
            raise

    @override
    def instantiate_classes(self) -> None:
        with self._refused_leaves_nothing():
            super().instantiate_classes()

    @override
    def after_instantiate_classes(self) -> None:
        with self._refused_leaves_nothing():
            self._check_and_record()

    def _check_and_record(self) -> None:
        config = self._config
        check_configuration(self.model, self.datamodule, self.trainer.callbacks)
        if self.checkpoint is not None:
            checkpoints.check_weights_fit(self.model, self.checkpoint, self.agreement)
        self._drop_unused_links()
        dumped = self.resolved_config()  # the dump Lightning made for the hyperparameters, made once
        trainer = dumped.get("trainer") or {}
        for name in self.integer_limits:  # jsonargparse dumps them as floats; Lightning reads 1.0 as every batch
            if isinstance(trainer.get(name), float):
                trainer[name] = int(trainer[name])
        # Links applied at instantiation reach the model but not the parsed config; write them in so
        # the records show the shapes that ran, not the signature's defaults.
        init_args = (dumped.get("model") or {}).get("init_args")
        for name in LINKS:
            if isinstance(init_args, dict) and name in init_args and self.datamodule is not None:
                value = getattr(self.datamodule, name)
                init_args[name] = list(value) if isinstance(value, tuple) else value
        self.record.config = dumped
        saved = rerunnable(dumped, self.placements, self.experiment)
        self.config_file.text = self._config_header() + yaml.safe_dump(saved, sort_keys=False)
        self.config_file.values = {
            "seed": config.seed_everything,
            "git_commit": git_commit(),
            "cnnlab": dumped,
            **({"training_run": (read_summary(self.run_dir).get("wandb") or {}).get("id")} if self.run_dir else {}),
        }
        if inherited_dirs() is None and launched_as_rank_zero():
            if self.resuming_in_place:
                keep_earlier_metrics(self.output_dir)
            say(f"{self.subcommand or 'fit'} '{self.experiment}' (seed {config.seed_everything}) -> {self.output_dir}")
            for note in self.agreement.notes():
                say(note)
            if self.subcommand in ("validate", "test", "predict") and self.checkpoint is None:
                say(
                    f"warning: no --ckpt_path, so this {self.subcommand} uses the model's freshly initialised (random) "
                    "weights. Add --ckpt_path best (or last, or a checkpoint file) to use a trained model."
                )

    def _config_header(self) -> str:
        """How the run was made and how to make it again, as YAML comments above the config."""
        made = shlex.join([*train_command(), *self.argv])
        env = " ".join(f"{name}={shlex.quote(value)}" for name, value in self._environment_overrides().items())
        return (
            f"# The resolved config of {self.output_dir}, written by cnnlab.\n"
            f"# Made by: {env + ' ' if env else ''}{made}\n"
            f"# Run it again (a new run, same settings and seed): {shlex.join(train_command())} "
            f"{self.subcommand or 'fit'} --config {shlex.quote(str(self.output_dir / 'config.yaml'))}\n"
        )

    def _environment_overrides(self) -> dict[str, str]:
        """The PL_<SUBCOMMAND>__* variables set for this command (those a --config file or an argument
        overrode too: the command line as it was run)."""
        prefix = f"PL_{(self.subcommand or 'fit').upper()}__"
        return {name: value for name, value in sorted(os.environ.items()) if name.startswith(prefix)}

    def _drop_unused_links(self) -> None:
        """LightningCLI records a linked value in the model's hparams even where the model has no such
        argument (num_classes for an autoencoder); saved in a checkpoint, it would break
        load_from_checkpoint(path) with an unexpected keyword argument."""
        if self.model is None:
            return
        params = inspect.signature(type(self.model).__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            params = {**params, **_inherited_parameters(type(self.model))}
        for name in LINKS:
            if name not in params:
                self.model.hparams.pop(name, None)

    # -- running ---------------------------------------------------------------------------------

    def fit(self, **kwargs) -> None:
        self._run(self.trainer.fit, **kwargs)

    def validate(self, **kwargs) -> None:
        self._run(self.trainer.validate, **kwargs)

    def test(self, **kwargs) -> None:
        self._run(self.trainer.test, **kwargs)

    def predict(self, **kwargs) -> None:
        # Predictions go to files through PredictionWriter; keeping them all in memory too would
        # defeat it on a large split.
        kwargs["return_predictions"] = False
        self._run(self.trainer.predict, **kwargs)

    def _run(self, method, **kwargs) -> None:
        failed = True
        try:
            method(**kwargs)
            failed = False
        except SIGTERMException:
            # Lightning ends a run stopped by SIGTERM with a SystemExit of status 0; a scheduler that sent
            # it must see the run did not finish: 128 + 15, as a process killed by SIGTERM.
            raise SystemExit(128 + signal.SIGTERM) from None
        except OSError as err:
            if disk_full(err) or err.errno in (errno.EROFS, errno.EACCES):
                raise CnnlabError(self._storage_failure(err)) from err
            raise
        finally:
            let_go(self.held)
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.finish(failed)
            if inherited_dirs() is None and launched_as_rank_zero():
                with contextlib.suppress(OSError):  # a closing block that cannot be made must not hide the error
                    self._say_what_happened()

    def _say_what_happened(self) -> None:
        """The closing block (cnnlab/closing.py): status, best score and checkpoint, record, next command."""
        summary = read_summary(self.output_dir)
        if not summary:
            return
        sync, wandb_line = None, None
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                sync = logger.sync_command()
        recorded = summary.get("wandb") or {}
        if recorded.get("mode") == "disabled":
            wandb_line = "disabled (WANDB_MODE=disabled): no W&B run"
        elif recorded.get("id") and recorded.get("started") is not False:
            wandb_line = f"run {recorded['id']} ({recorded.get('mode') or 'online'}, project {recorded.get('project')})"
        block = closing_block(self.subcommand or "fit", summary, self.output_dir, self.run_dir, sync, wandb_line)
        print("\n" + "\n".join(f"cnnlab: {line}" for line in block.splitlines()), file=sys.stderr, flush=True)

    def _storage_failure(self, err: OSError) -> str:
        """What a full or read-only disk during a command means for its run, and how to go on."""
        where = err.filename or self.output_dir
        what = "is full" if disk_full(err) else "cannot be written"
        text = f"The disk {what} ({err.strerror}: {where}), so the {self.subcommand} stopped."
        summary = read_summary(self.output_dir)
        if summary.get("status") in ("failed", "interrupted"):
            text += f" Its record {self.output_dir}/summary.json says so."
        else:
            text += f" Its record {self.output_dir}/summary.json could not be written to say so (no room)."
        if self.subcommand != "fit":
            return f"{text} Free space there and run it again."
        verified = summary.get("checkpoints") or {}
        if verified:
            name = "last" if "last" in verified else "best"
            path = verified[name]["path"]
            return (
                f"{text} Free space there (or set --trainer.default_root_dir to another disk), then resume from its "
                f"{name} checkpoint, which verifies against the SHA-256 in the record: add --ckpt_path {path} to "
                "the same command."
            )
        return f"{text} No checkpoint had been written; free space there and start the run again."


def early_stopping(config: Namespace) -> list[Callback]:
    """Lightning's EarlyStopping on what the checkpoint monitors, where early_stopping.patience is set:
    the run stops when the value its best checkpoint is chosen by stops improving."""
    settings = config.get("early_stopping") or Namespace()
    patience = settings.get("patience")
    if patience is None:
        return []
    if patience < 1:
        raise CnnlabError(
            f"early_stopping.patience is {patience}; give the number of validations without improvement to wait "
            "(1 or more), or leave it unset for no early stopping."
        )
    checkpoint = config.checkpoint
    return [
        EarlyStopping(
            monitor=checkpoint.monitor,
            mode=checkpoint.mode,
            patience=patience,
            min_delta=settings.get("min_delta") or 0.0,
        )
    ]


def rerunnable(dumped: dict, placements: dict, experiment: str) -> dict:
    """The resolved config (what the record holds: what ran) as one that re-runs the run (`fit --config
    <run>/config.yaml`): the run's directories and logger names as the user gave them (cnnlab places
    them per run, and a re-run gets a directory of its own); the experiment named, since the file is no
    longer called after it."""
    dumped = copy.deepcopy(dumped)
    trainer = dumped.get("trainer") or {}
    trainer["default_root_dir"] = placements.get("trainer.default_root_dir")
    if isinstance(dumped.get("checkpoint"), dict):
        dumped["checkpoint"]["dirpath"] = placements.get("checkpoint.dirpath")
    given = placements.get("trainer.logger") or []
    loggers = trainer.get("logger")
    for logger, user_args in zip(loggers if isinstance(loggers, list) else [loggers], given, strict=False):
        if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict) and user_args is not None:
            logger["init_args"] = {**logger["init_args"], **user_args}
    dumped["experiment"] = experiment
    if dumped.get("ckpt_path"):  # an evaluation's: found again from any working directory
        dumped["ckpt_path"] = str(Path(dumped["ckpt_path"]).resolve())
    return dumped


def with_atomic_checkpoints(plugins) -> list:
    """The configured trainer plugins, plus AtomicCheckpointIO unless one of them is a CheckpointIO."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def drop_idle_wandb(trainer_config) -> None:
    """A `predict` logs no metrics: a W&B run would hold nothing unless a callback draws predictions
    (ReconstructionGrid, SampleGrid, DensePredictionGrid), so it gets none; files are written either way."""
    callbacks = trainer_config.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    if any(getattr(c, "draws_at_predict", False) for c in callbacks):
        return
    logger = trainer_config.get("logger")
    if isinstance(logger, WandbLogger):
        trainer_config["logger"] = False
    elif isinstance(logger, list):
        trainer_config["logger"] = [item for item in logger if not isinstance(item, WandbLogger)] or False


# Data settings that change how the data is read or trained on, not which images an evaluation sees
SAME_EVALUATION_DATA = ("batch_size", "eval_batch_size", "num_workers", "download", "augment", "max_train_samples")


def training_wandb_run(training: dict) -> dict | None:
    """The W&B run of a training run, from its summary.json (id and project as started, name, labels and
    entity as configured), or None where it had none (another logger, W&B disabled)."""
    recorded = training.get("wandb") or {}
    if not (recorded.get("id") and recorded.get("started") and recorded.get("mode") in ("online", "offline")):
        return None
    loggers = ((training.get("config") or {}).get("trainer") or {}).get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    wandb_args = next(
        (
            item.get("init_args") or {}
            for item in loggers
            if isinstance(item, dict) and str(item.get("class_path", "")).endswith("WandbLogger")
        ),
        {},
    )
    run = {key: wandb_args.get(key) for key in ("name", "group", "job_type", "tags", "entity")}
    return run | {
        "id": recorded["id"],
        "project": recorded.get("project"),
        "entity": recorded.get("entity") or run["entity"],
    }


def other_data(trained: dict, data: Namespace | None) -> list[str]:
    """The data settings of an evaluation (`data`, parsed: from the command line, --config files or PL_*
    variables alike) that differ from the training's (`trained`, as its record holds them), leaving out
    those that do not change which images are evaluated (SAME_EVALUATION_DATA)."""

    def plain(value):  # a parsed value as the record holds it (YAML's types)
        value = value.as_dict() if isinstance(value, Namespace) else value
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return str(value) if isinstance(value, Path) else value

    data = data or Namespace()
    if str(data.get("class_path")) != str(trained.get("class_path")):
        return ["data.class_path"]
    now, before = plain(data.get("init_args") or Namespace()), trained.get("init_args") or {}
    changed = []
    for name in sorted(set(now) | set(before)):
        if name in SAME_EVALUATION_DATA:
            continue
        if name == "data_dir":
            differs = (
                before.get(name) is None or Path(str(now.get(name))).resolve() != Path(str(before[name])).resolve()
            )
        else:
            differs = now.get(name) != before.get(name)
        if differs:
            changed.append(f"data.{name}")
    return changed


def keep_earlier_metrics(run_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing metrics.csv when it starts; a resumed run keeps the
    earlier rows as metrics-part<k>.csv instead."""
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        k = 1 + len(list(run_dir.glob("metrics-part*.csv")))
        metrics.rename(run_dir / f"metrics-part{k}.csv")


def _inherited_parameters(cls: type) -> dict:
    """Parameters a class takes through **kwargs handed to its parents (the VAE's AutoEncoder ones)."""
    found: dict = {}
    for parent in cls.__mro__[1:]:
        if "__init__" in vars(parent):
            found |= dict(inspect.signature(parent.__init__).parameters)
    return found


def check_trainer_settings(config: Namespace) -> None:
    """Trainer settings that would fail only once the run has started, said before anything is made."""
    trainer = config.trainer
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CnnlabError(
            f"trainer.accelerator is {accelerator!r} (a GPU preset such as configs/trainer/gpu_amp.yaml?), but torch "
            "finds no GPU on this machine. Run on the CPU: leave the GPU preset out, or add --trainer.accelerator cpu "
            "--trainer.precision 32-true --trainer.devices 1."
        )
    scheduler = ((config.model.get("init_args") or {}).get("lr_scheduler") or {}) if config.get("model") else {}
    class_path = str(scheduler.get("class_path") if isinstance(scheduler, Namespace) else "")
    if "OneCycleLR" in class_path and trainer.get("max_epochs") == -1 and (trainer.get("max_steps") or -1) == -1:
        raise unbounded_plan(class_path.rsplit(".", 1)[-1])


def find_cnnlab_error(err: BaseException) -> CnnlabError | None:
    """Our paragraph, where a library (jsonargparse instantiating a class) wrapped it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, CnnlabError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args=None) -> None:
    """Entry point of train.py: run the CLI; print a bad input's paragraph and exit 2."""
    try:
        CnnlabCLI(args=args)
    except Exception as err:
        if os.environ.get(DEBUG_ENV):
            raise
        paragraph = find_cnnlab_error(err)
        if paragraph is None and isinstance(err, RuntimeError) and str(err).startswith("Early stopping conditioned"):
            paragraph = CnnlabError(
                f"{err} Early stopping watches checkpoint.monitor: set it to a metric the model logs (the one the "
                "best checkpoint is chosen by), or leave configs/trainer/early_stopping.yaml out."
            )
        if paragraph is None and isinstance(err, MisconfigurationException):
            paragraph = CnnlabError(f"Lightning refused the configuration: {err} Fix that setting and run again.")
        if paragraph is None:
            raise
        print(f"\ncnnlab: error: {paragraph}\n(set CNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
