"""The W&B logger of record: online when wandb has credentials, offline by itself (and saying how to
sync) when it has none, and failing in plain words when W&B cannot start a run.

Online or offline is decided by wandb's own credential lookup (`wandb.login(prompt=False)`: the
WANDB_API_KEY variable, wandb's settings files, .netrc for the host wandb is set to use), never by a
guess of our own. The run starts when something is first logged, so a command that logs nothing
(a `predict` that draws no figure) opens no empty run.
"""

import os
import secrets
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info

from cnnlab.errors import CnnlabError

CONFIG_FILE = "cnnlab_config.yaml"  # W&B reserves config.yaml for its own run config


def wandb_has_credentials() -> bool:
    """What wandb itself would use: its login without a prompt (no server call, no file written when
    there are no credentials)."""
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # wandb raises its own types for a malformed key or settings file
        return False


def decide_offline(offline: bool | None) -> bool:
    """An explicit `offline` wins; then WANDB_MODE; then online exactly when wandb has credentials."""
    if offline is not None:
        return offline
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    return not wandb_has_credentials()


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, offline by itself where wandb finds no credentials.

    Args:
        offline: None decides as wandb does: WANDB_MODE if set, else online exactly when wandb has
            credentials (WANDB_API_KEY, `wandb login`, a .netrc entry for its host). Offline runs
            sync later with `wandb sync`.
        (the rest as Lightning's WandbLogger; extra wandb.init arguments go in dict_kwargs)
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = ".",
        version: str | None = None,
        offline: bool | None = None,
        project: str = "cnnlab",
        log_model: bool | str = False,
        prefix: str = "",
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        **kwargs,
    ) -> None:
        offline = decide_offline(offline)
        if offline and os.environ.get("WANDB_MODE", "") not in ("offline", "dryrun", "disabled"):
            rank_zero_info(
                f"cnnlab: wandb has no credentials (WANDB_API_KEY or `wandb login`): logging offline into "
                f"{save_dir}/wandb/. Upload later with `wandb sync {save_dir}/wandb/offline-run-*`."
            )
        # From YAML every wandb.init argument arrives, unset ones as None: leave those to Lightning and wandb.
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        for key, value in (("group", group), ("job_type", job_type), ("tags", tags)):
            if value is not None:
                kwargs[key] = value
        # Said to wandb.init explicitly: wandb reads WANDB_MODE (which Lightning sets for offline runs)
        # only when its settings are first made, and the credential lookup above made them already.
        kwargs["mode"] = "offline" if offline else "online"
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version or secrets.token_hex(4),
            offline=offline,
            project=project,
            log_model=log_model,
            prefix=prefix,
            **kwargs,
        )
        self.offline = offline
        # Lightning would set WANDB_MODE for an offline run just before wandb.init, after the credential
        # lookup above started wandb's session, and wandb would warn on every run that the change is
        # ignored: the mode goes to wandb.init instead (kwargs["mode"]), and Lightning's flag is cleared.
        self._offline = False
        # Lightning passes anonymous=None to wandb.init, which warns on every run that the setting is gone.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self._pending_hparams: dict | None = None
        self._pending_config: tuple[str, dict] | None = None

    @property
    def started(self) -> bool:
        return getattr(self, "_experiment", None) is not None

    @property
    def experiment(self):
        fresh = not self.started
        try:
            run = super().experiment
        except Exception as err:  # wandb raises its own assorted types: network, auth, usage
            raise CnnlabError(
                f"W&B could not start a run: {err}. Check the entity/project and your network, or log "
                "offline with WANDB_MODE=offline (sync later with `wandb sync`), or choose another logger: "
                "--config configs/logger/csv.yaml."
            ) from err
        if fresh and self.started:
            self._attach_pending(run)
        return run

    def log_hyperparams(self, params) -> None:
        # Held until the run starts (at the first thing logged), so a command that logs nothing opens no run.
        if self.started:
            super().log_hyperparams(params)
        else:
            self._pending_hparams = params

    def attach_config(self, config_yaml: str, values: dict) -> None:
        """The resolved config as the run's config and as a file named CONFIG_FILE among its files,
        when the run starts."""
        self._pending_config = (config_yaml, values)
        if self.started:
            self._attach_pending(self.experiment)

    def _attach_pending(self, run) -> None:
        if self._pending_hparams is not None:
            params, self._pending_hparams = self._pending_hparams, None
            super().log_hyperparams(params)
        if self._pending_config is not None:
            (config_yaml, values), self._pending_config = self._pending_config, None
            run.config.update(values, allow_val_change=True)
            path = Path(run.dir) / CONFIG_FILE
            path.write_text(config_yaml)
            run.save(str(path), base_path=run.dir, policy="now")

    def finish(self, failed: bool) -> None:
        """Close this run now, not at interpreter exit: the next run in the same process (a seed
        worker, a test) would otherwise log into it."""
        if self.started:
            self.experiment.finish(exit_code=1 if failed else 0)
