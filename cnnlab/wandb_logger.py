"""The W&B logger of record: online when wandb has credentials, offline by itself (and saying how to
sync) when it has none, and failing in plain words when W&B cannot start a run.

Online or offline is decided by wandb's own credential lookup (`wandb.login(prompt=False)`: the
WANDB_API_KEY variable, wandb's settings files, .netrc for the host wandb is set to use), never by a
guess of our own. The run starts off the training's critical path: importing wandb, the credential
lookup and `wandb.init` (seconds, the first time in a process) run in a background thread from the
moment Lightning first asks for the run, and whatever needs the run waits for it there; a run that
cannot start stops the command at that point, before any checkpoint is written.
"""

import os
import secrets
import threading
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from cnnlab.errors import CnnlabError
from cnnlab.lightning_internals import WandbInternals

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


class _StartingRun:
    """What `WandbLogger.experiment` returns while wandb.init runs in the background: any use of it
    waits for the real run (Lightning only asks for the run at set-up, to have it ready)."""

    def __init__(self, logger: "WandbLogger") -> None:
        object.__setattr__(self, "_logger", logger)

    def __getattr__(self, name: str):
        return getattr(self._logger.wait(), name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._logger.wait(), name, value)


class WandbLogger(WandbInternals):
    """Lightning's WandbLogger, offline by itself where wandb finds no credentials, started in the
    background.

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
        # From YAML every wandb.init argument arrives, unset ones as None: leave those to Lightning and wandb.
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        for key, value in (("group", group), ("job_type", job_type), ("tags", tags)):
            if value is not None:
                kwargs[key] = value
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version or secrets.token_hex(4),
            offline=bool(offline),
            project=project,
            log_model=log_model,
            prefix=prefix,
            **kwargs,
        )
        self._asked_offline = offline
        self.offline: bool | None = None  # decided with wandb's credential lookup, when the run starts
        # Lightning would set WANDB_MODE for an offline run just before wandb.init, after the credential
        # lookup started wandb's session, and wandb would warn on every run that the change is ignored:
        # the mode goes to wandb.init instead (`_start`), and Lightning's flag is cleared.
        self.clear_lightning_offline()
        # Lightning passes anonymous=None to wandb.init, which warns on every run that the setting is gone.
        if self.init_kwargs.get("anonymous") is None:
            self.init_kwargs.pop("anonymous", None)
        self._pending_hparams: dict | None = None
        self._pending_config: tuple[str, dict] | None = None
        self._lock = threading.RLock()
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None

    @property
    def started(self) -> bool:
        """Whether a W&B run exists (or is being started)."""
        return self._starter is not None or self.current_run is not None

    @property
    def experiment(self):
        if rank_zero_only.rank != 0:  # Lightning gives other ranks a stand-in that does nothing
            return super().experiment
        with self._lock:
            if self._starter is None and self.current_run is None:
                self._starter = threading.Thread(target=self._start, name="wandb-start", daemon=True)
                self._starter.start()
        if self._starter is not None and self._starter.is_alive():
            return _StartingRun(self)
        return self.wait()

    def _start(self) -> None:
        """In the background: decide online or offline as wandb does, start the run, attach what was
        logged before it existed."""
        try:
            offline = decide_offline(self._asked_offline)
            if offline and os.environ.get("WANDB_MODE", "") not in ("offline", "dryrun", "disabled"):
                rank_zero_info(
                    f"cnnlab: wandb has no credentials (WANDB_API_KEY or `wandb login`): logging offline into "
                    f"{self.save_dir}/wandb/. Upload later with `wandb sync {self.save_dir}/wandb/offline-run-*`."
                )
            self.offline = offline
            self.init_kwargs["mode"] = "offline" if offline else "online"
            run = self.start_lightning_run()
            with self._lock:
                self._attach_pending(run)
        except BaseException as err:  # wandb raises its own assorted types: network, auth, usage
            self._start_error = err

    def wait(self):
        """The W&B run, once started; one paragraph if it could not start."""
        starter = self._starter
        if starter is not None and starter is not threading.current_thread():
            starter.join()
        if self._start_error is not None:
            err = self._start_error
            raise CnnlabError(
                f"W&B could not start a run: {err}. Check the entity/project and your network, or log "
                "offline with WANDB_MODE=offline (sync later with `wandb sync`), or choose another logger: "
                "--config configs/logger/csv.yaml."
            ) from err
        return self.current_run

    def log_hyperparams(self, params) -> None:
        # Held until the run exists; attached by the thread that starts it.
        with self._lock:
            if self.current_run is not None:
                super().log_hyperparams(params)
            else:
                self._pending_hparams = params

    def attach_config(self, config_yaml: str, values: dict) -> None:
        """The resolved config as the run's config and as a file named CONFIG_FILE among its files,
        when the run starts."""
        with self._lock:
            self._pending_config = (config_yaml, values)
            if self.current_run is not None:
                self._attach_pending(self.current_run)

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
            try:
                run = self.wait()
            except CnnlabError:
                return
            if run is not None:
                run.finish(exit_code=1 if failed else 0)
