"""The one place where cnnlab touches Lightning's private or undocumented members (LightningCLI's,
TQDMProgressBar's `_should_update`, TensorBoardLogger's `_default_hp_metric`, WandbLogger's state,
`lightning.pytorch.overrides`, the lines Lightning logs that a user cannot act on), and why.

Tested with lightning 2.6.6 (the versions pyproject.toml admits are those the test suite has passed on;
see docs/design.md). Each override is written so that a Lightning without the private method it
replaces behaves the same: cnnlab reconciles `--ckpt_path` in the public `parse_arguments` hook itself.
"""

import copy
import logging
import time
import warnings
from collections.abc import Iterable

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

# Evaluation batches of DDP ranks without DistributedSampler's padding (each sample once): Lightning's
# own sampler, from its undocumented `overrides` module (datamodules/base.py uses it).
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler  # noqa: F401
from typing_extensions import override

CKPT_PATH_HELP = (
    "A checkpoint file, or `best` / `last` of this experiment's runs: the newest finished run that is not a "
    "smoke test (fast_dev_run) and has that checkpoint; for `fit --ckpt_path last`, the newest run with a "
    "last.ckpt, finished or not (an unfinished run resumes in its own directory). The command prints the "
    "run it picked."
)
_PARSERS: dict = {}  # a warm process's argument parsers (cnnlab-seeds workers), see WarmParsers

# Lines Lightning 2.6 logs (rank_zero_info) on every run that say nothing about the run: adverts for
# its cloud services, printed whatever the logger ("💡 Tip: ... litlogger", "... litmodels"), and a
# note that the training loader was built early to count the steps (for OneCycleLR's length).
LIGHTNING_NOISE = ("💡 Tip:", "Loading `train_dataloader` to estimate number of stepping batches")


class WithoutLightningNoise(logging.Filter):
    """Drops the records of LIGHTNING_NOISE; every other line Lightning logs passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Filter LIGHTNING_NOISE out of the logger `rank_zero_info` writes to (once per process)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, WithoutLightningNoise) for f in logger.filters):
        logger.addFilter(WithoutLightningNoise())


quiet_lightning()

# CSVLogger warns, on every run, that the run directory "exists and is not empty. Previous log files in
# this directory will be deleted": it is the directory cnnlab claimed for the run, which holds cnnlab's
# own files (config.yaml, checkpoints/) before the logger starts. The one file Lightning deletes is
# metrics.csv, which a run resumed in place has renamed to metrics-part<k>.csv (cli.keep_earlier_metrics).
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


def without_placeholder_hp_metric(loggers: Iterable[Logger]) -> None:
    """TensorBoardLogger (default_hp_metric=True, Lightning's default) logs `hp_metric` = -1 with the
    hyperparameters, a placeholder that reads like a result in TensorBoard's scalars and HPARAMS tab.
    cnnlab never wants it: configs/logger/tensorboard.yaml turns it off, and this turns it off for a
    TensorBoardLogger configured any other way (`--trainer.logger lightning.pytorch.loggers.TensorBoardLogger`).
    Sets the private flag the constructor argument sets; `log_hyperparams` reads it at the run's start."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger._default_hp_metric = False


class CnnlabInternals(LightningCLI):
    @override
    def _parse_ckpt_path(self) -> None:
        # Lightning (2.5+) re-parses the config with the checkpoint's model arguments laid over it: an
        # argument given on the command line is silently dropped and a checkpoint of another model class
        # silently replaces the config's. cnnlab reconciles the two in parse_arguments instead
        # (cnnlab/checkpoints.py), so Lightning's version must not run after it.
        return

    @override
    def _dump_config(self) -> None:
        # Lightning's dump of the config for the checkpoints' hyperparameters, without checking the
        # values again: they were checked when parsed, and the check is most of a dump's cost (paid by
        # every run, twice per seed of a sweep). `skip_check` is jsonargparse's public argument.
        if hasattr(self, "config_dump"):
            return
        dump = self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml", skip_check=True)
        self.config_dump = yaml.safe_load(dump)
        if "subcommand" in self.config:
            self.config_dump = self.config_dump[self.config.subcommand]

    def resolved_config(self) -> dict:
        """The resolved config as plain data (a copy of the one dump Lightning's `_dump_config` makes,
        for the checkpoints' hyperparameters, and the records)."""
        self._dump_config()
        return copy.deepcopy(self.config_dump)

    @override
    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        # --ckpt_path's help is the Trainer method's docstring ("best", "last", "hpc", "registry"); cnnlab
        # resolves it itself (cnnlab/checkpoints.py), so its help says what it takes here.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        for action in parser._actions:
            if action.dest == "ckpt_path":
                action.help = CKPT_PATH_HELP
        return parser

    @override
    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        without_placeholder_hp_metric(trainer.loggers)
        return trainer


class WarmParsers(LightningCLI):
    """Builds the argument parsers once per process and reuses them (cnnlab-seeds workers run many
    seeds in one process). A parser depends only on the classes and the CLI's defaults, never on the
    arguments; building it (all four subcommands, every class signature) is a large part of a warm
    seed's overhead. `_subcommand_parsers` and `_subcommand_method_arguments` are LightningCLI's own
    bookkeeping of the parsers it built, kept with them."""

    @override
    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        key = (add_subcommands, tuple(self.subcommands()))  # CnnlabCLI builds the one subcommand it runs
        if key not in _PARSERS:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
            _PARSERS[key] = (
                self.parser,
                getattr(self, "_subcommand_parsers", None),
                getattr(self, "_subcommand_method_arguments", None),
            )
            return
        self.parser, self._subcommand_parsers, self._subcommand_method_arguments = _PARSERS[key]


def bar_metrics(metrics: dict[str, float], monitor: str | None, width: int | None = None) -> dict[str, str]:
    """The metrics beside the progress bar: the checkpoints' monitored one first (`val/acc`), then the
    others of its stage (`val/...`), then the rest as logged; each value to three significant digits as
    Lightning's bar writes them. With `width` (characters for the metrics), those at the end that do
    not fit are left out, never the monitored one: a terminal cuts a line that is too long at its end."""
    stage = monitor.split("/", 1)[0] + "/" if monitor and "/" in monitor else None
    names = sorted(metrics, key=lambda name: (name != monitor, not (stage and name.startswith(stage))))
    shown = {name: Tqdm.format_num(metrics[name]) for name in names}
    while width is not None and len(shown) > 1 and len(", ".join(f"{k}={v}" for k, v in shown.items())) > width:
        shown.popitem()
    return shown


class TimedProgressBar(TQDMProgressBar):
    """Lightning's progress bar with no device read between logging steps. Lightning redraws it every
    `refresh_rate` batches and each redraw reads the logged metrics (the training loss beside the bar)
    back from the device: on a GPU with a short step, a redraw every step made the host wait for the
    GPU every step. Here the counter is redrawn at most every `min_interval` seconds (and at an epoch's
    end), which reads nothing from the device, and the whole bar with the metrics beside it on every
    step whose values the loggers write (every `log_every_n_steps`), which read them back anyway. Overrides
    TQDMProgressBar's private `_should_update` (lightning 2.x), the test its batch hooks make.

    Beside the bar: the metric the checkpoints monitor first, then the others, as many as fit the
    terminal (`bar_metrics`); no `v_num` (the logger's version, which names nothing a user looks for)."""

    def __init__(self, min_interval: float = 0.5) -> None:
        super().__init__(refresh_rate=1)
        self.min_interval = min_interval
        self._last_draw = 0.0

    @override
    def _should_update(self, current: int, total: int) -> bool:
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._last_draw >= self.min_interval:
            self._last_draw = now
            return True
        return False

    @override
    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        return bar_metrics(trainer.progress_bar_metrics, monitor, self._room_for_metrics())

    def _room_for_metrics(self) -> int | None:
        """Characters left for the metrics on the training bar's line, keeping a bar 10 wide and a few
        characters for its rate and times to grow; None where the width is unknown (not a terminal:
        nothing cuts the line)."""
        try:
            bar = self.train_progress_bar
        except TypeError:  # not made yet
            return None
        if bar.disable:
            return None
        meter = bar.format_dict
        if not meter.get("ncols"):
            return None
        line = bar.format_meter(**{**meter, "postfix": None, "ncols": None})  # its bar 10 wide
        return meter["ncols"] - len(line) - len(", ") - 4

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or not self.is_enabled:
            return
        logging_step = trainer.global_step % max(1, trainer.log_every_n_steps) == 0 or trainer.is_last_batch
        if not (self._should_update(n, bar.total) or logging_step):
            return
        if not bar.disable:
            bar.n = n
            if logging_step:
                bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()


class WandbInternals(WandbLogger):
    """What cnnlab's WandbLogger (cnnlab/wandb_logger.py) needs of Lightning's WandbLogger state, which
    it keeps in private attributes: the arguments it will hand to `wandb.init` (`_wandb_init`), the
    run once started (`_experiment`), its offline flag (`_offline`, on which it would set WANDB_MODE
    after wandb's session had started), and its own way of starting the run (the `experiment`
    property's body, which cnnlab calls from a background thread)."""

    @property
    def init_kwargs(self) -> dict:
        return self._wandb_init

    @property
    def current_run(self):
        """The W&B run if it was started, else None (never starts one)."""
        return getattr(self, "_experiment", None)

    def clear_lightning_offline(self) -> None:
        self._offline = False

    def start_lightning_run(self):
        return WandbLogger.experiment.fget(self)
