"""The one place where cnnlab touches Lightning's private or undocumented members (LightningCLI's,
TQDMProgressBar's `_should_update`, WandbLogger's state, `lightning.pytorch.overrides`), and why.

Tested with lightning 2.6.6 (the versions pyproject.toml admits are those the test suite has passed on;
see docs/design.md). Each override is written so that a Lightning without the private method it
replaces behaves the same: cnnlab reconciles `--ckpt_path` in the public `parse_arguments` hook itself.
"""

import copy
import time

import yaml
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

# Evaluation batches of DDP ranks without DistributedSampler's padding (each sample once): Lightning's
# own sampler, from its undocumented `overrides` module (datamodules/base.py uses it).
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler  # noqa: F401
from typing_extensions import override

_PARSERS: dict = {}  # a warm process's argument parsers (cnnlab-seeds workers), see WarmParsers


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


class TimedProgressBar(TQDMProgressBar):
    """Lightning's progress bar with no device read between logging steps. Lightning redraws it every
    `refresh_rate` batches and each redraw reads the logged metrics (the training loss beside the bar)
    back from the device: on a GPU with a short step, a redraw every step made the host wait for the
    GPU every step. Here the counter is redrawn at most every `min_interval` seconds (and at an epoch's
    end), which reads nothing from the device, and the whole bar with the metrics beside it on every
    step whose values the loggers write (every `log_every_n_steps`), which read them back anyway. Overrides
    TQDMProgressBar's private `_should_update` (lightning 2.x), the test its batch hooks make."""

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
