"""The W&B logger of record: W&B's own settings decide (WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR,
WANDB_TAGS; online exactly when wandb has credentials), an evaluation of a run's checkpoint logs into that
run's W&B run, an offline run says how to upload it, and a run that cannot start fails in plain words.

Online or offline is decided by wandb's own credential lookup (`wandb.login(prompt=False)`: the
WANDB_API_KEY variable, wandb's settings files, .netrc for the host wandb is set to use), never by a
guess of our own. The run starts off the training's critical path: importing wandb, the credential
lookup and `wandb.init` (seconds, the first time in a process) run in a background thread from the
moment Lightning first asks for the run, and whatever needs the run waits for it there; a run that
cannot start stops the command at that point, before any checkpoint is written.

One W&B run per training run. A validate/test/predict of one of its checkpoints resumes it by id (the
CLI sets `evaluation`, cnnlab/cli.py `_name_wandb_run`) and logs its keys beside the training's:
`test/...` as logged, everything else under `<subcommand>/` (`validate/val/acc`), never `epoch` or
`trainer/global_step`, so the training's own summary is never overwritten.

Offline, that resume is a second `offline-run-*-<id>` directory (the evaluation's own, under its record).
What wandb does with it (read in wandb 0.30.0 and 0.31.0, and wandb/wandb on GitHub):
- wandb 0.31 records the resume in the offline file (`RunRecord.resume`, proto field 24, true for
  `resume="allow"`); the offline run itself starts afresh (`resumed` false, its history `_step` from 0
  again). wandb 0.30 did not: `wandb.init` warned "`resume` will be ignored since W&B syncing is set to
  `offline`" (wandb/sdk/wandb_init.py), and syncing that file replaced the run's history (wandb/wandb
  issues #3841, #5865); hence `wandb>=0.31` in pyproject.toml.
- `wandb sync` (wandb-core, 0.30+) replays a file through the same sender as a live run, so the
  recorded resume makes it upsert into the existing run: the server's summary and config are the
  starting point (core/internal/runbranch/resume.go, `processResponse`) and history continues after the
  run's last `_step` (`StartingStep`, applied by the sender: "sender: error applying history step" in
  wandb-core 0.31). Files of one run given to ONE `wandb sync` are synced one after another in order of
  start time (core/internal/runsync/runsyncoperation.go, `initAndPlan`; `wandb sync --help`), so the
  fit's file comes first whatever the order on the command line. `sync_command` lists them all, in
  that order anyway; rerunning it skips files already synced (`<file>.wandb.synced`).
Not checked here: an upload against a server (none is reachable from the tests).
"""

import os
import secrets
import threading
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from cnnlab.errors import CnnlabError
from cnnlab.lightning_internals import WandbInternals
from cnnlab.records import read_summary
from cnnlab.run_dir import EVALUATIONS
from cnnlab.shell_paths import offline_dirs, shell_path

CONFIG_FILE = "cnnlab_config.yaml"  # W&B reserves config.yaml for its own run config
DEFAULT_PROJECT = "cnnlab"  # where WANDB_PROJECT and the config name none
TRAINING_KEYS = ("epoch", "trainer/global_step")  # Lightning adds them to every row; an evaluation's are 0


def wandb_has_credentials() -> bool:
    """What wandb itself would use: its login without a prompt (no server call, no file written when
    there are no credentials)."""
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # wandb raises its own types for a malformed key or settings file
        return False


def decide_mode(offline: bool | None) -> str:
    """The mode, "online", "offline" or "disabled": an explicit `offline` wins; then WANDB_MODE (WANDB_DISABLED)
    as wandb reads it; then online exactly when wandb has credentials."""
    if offline is not None:
        return "offline" if offline else "online"
    mode = os.environ.get("WANDB_MODE", "")
    if mode == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return "disabled"
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode == "online":
        return "online"
    return "online" if wandb_has_credentials() else "offline"


def decide_offline(offline: bool | None) -> bool:
    """Whether the run will not reach a server (offline or disabled), decided as `decide_mode` does."""
    return decide_mode(offline) != "online"


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
    """Lightning's WandbLogger, with W&B's own settings deciding, started in the background.

    Args:
        offline: None decides as wandb does: WANDB_MODE if set (`disabled`: no W&B run and no files,
            the records are written as always), else online exactly when wandb has credentials
            (WANDB_API_KEY, `wandb login`, a .netrc entry for its host). An offline run prints the
            `wandb sync` command that uploads it (`sync_command`).
        project: None: WANDB_PROJECT, else "cnnlab". A project given here wins over WANDB_PROJECT, as
            an explicit `wandb.init` argument does (so configs/logger/wandb.yaml names none).
        log_model: upload checkpoints as W&B artifacts (type "model", named model-<run id>): True, the
            best and last at the end of fit; "all", every checkpoint as it is written. Off by default:
            each is a copy of the checkpoint in W&B's staging folder, offline until synced.
        evaluation: set by the CLI, not by hand: the subcommand (validate, test, predict) of an
            evaluation that logs into its training run's W&B run (`version` is that run's id), as
            `<checkpoint>/<subcommand>` for a checkpoint other than the run's best. Its keys get the
            subcommand as prefix unless they have it (`test/acc` stays, `val/acc` of a validate becomes
            `validate/val/acc`), and the checkpoint's name before it (`last/test/acc`); `epoch` and
            `trainer/global_step` (the training's, 0 in an evaluation) are left out; the run's config and state stay the
            training's; its resolved config is saved as evaluations/<its folder>/cnnlab_config.yaml.
        (the rest as Lightning's WandbLogger; extra wandb.init arguments go in dict_kwargs.
        WANDB_ENTITY, WANDB_TAGS, WANDB_RUN_GROUP and WANDB_JOB_TYPE apply where the config names none;
        WANDB_DIR, where set, holds the offline folders instead of the run's directory.)
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = ".",
        version: str | None = None,
        offline: bool | None = None,
        project: str | None = None,
        log_model: bool | str = False,
        prefix: str = "",
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        evaluation: str | None = None,
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
            offline=False,  # decided when the run starts (`_start`); Lightning would refuse log_model offline
            project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            log_model=log_model,
            prefix=prefix,
            **kwargs,
        )
        self._asked_offline = offline
        self.checkpoint_artifacts = log_model
        self.evaluation = evaluation
        self.mode: str | None = None  # online, offline or disabled: decided when the run starts
        self.offline: bool | None = None
        # Lightning would set WANDB_MODE for an offline run just before wandb.init, after the credential
        # lookup started wandb's session, and wandb would warn on every run that the change is ignored:
        # the mode goes to wandb.init instead (`_start`), and Lightning's flag is cleared.
        self.clear_lightning_offline()
        # Lightning passes anonymous=None to wandb.init, which warns on every run that the setting is gone.
        if self.init_kwargs.get("anonymous") is None:
            self.init_kwargs.pop("anonymous", None)
        # An explicit `dir` would beat WANDB_DIR; where that is set, wandb's folders go there.
        if os.environ.get("WANDB_DIR"):
            self.init_kwargs.pop("dir", None)
        self._pending_hparams: dict | None = None
        self._pending_config: tuple[str, dict] | None = None
        self._lock = threading.RLock()
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._sync_dir: Path | None = None

    @property
    def entity(self) -> str | None:
        """The run's entity (WANDB_ENTITY, the config's, or the account's default once the run exists),
        recorded so that an evaluation resumes the run where it is."""
        run = self.current_run if self.mode in ("online", "offline") else None
        return getattr(run, "entity", None) or self.init_kwargs.get("entity") or os.environ.get("WANDB_ENTITY")

    @property
    def offline_dir(self) -> Path | None:
        """The run's offline folder (under WANDB_DIR where set), once it has started offline."""
        return self._sync_dir if self.mode == "offline" else None

    @property
    def started(self) -> bool:
        """Whether a W&B run exists (or is being started): not where W&B is disabled."""
        return (self._starter is not None or self.current_run is not None) and self.mode != "disabled"

    @property
    def version(self) -> str | None:
        """The run's id: the started run's, else the one it will be started with."""
        run = self.current_run
        return run.id if run is not None else self.init_kwargs.get("id")

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
        """In the background: decide the mode as wandb does, start the run, attach what was logged
        before it existed."""
        try:
            mode = decide_mode(self._asked_offline)
            if mode == "offline" and not os.environ.get("WANDB_MODE"):
                rank_zero_info(
                    "cnnlab: wandb has no credentials (WANDB_API_KEY or `wandb login`): logging offline; the "
                    "`wandb sync` command that uploads the run is printed at the end."
                )
            self.mode, self.offline = mode, {"online": False, "offline": True}.get(mode)
            self.init_kwargs["mode"] = mode
            settings = self.init_kwargs.get("settings") or {}
            if isinstance(settings, dict):  # wandb's end-of-run history, summary and sync hint: cnnlab prints its own
                self.init_kwargs["settings"] = {"quiet": True, **settings}
            run = self.start_lightning_run()
            if mode == "offline":
                self._sync_dir = Path(run.settings.sync_dir)
            if self.evaluation and mode != "disabled":
                # Lightning has wandb fill `trainer/global_step` into rows without it (step_sync): an
                # evaluation's (0, or the last value this process saw) would overwrite the training's.
                run.define_metric("*", step_metric="trainer/global_step", step_sync=False, overwrite=True)
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

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        if not self.evaluation:
            super().log_metrics(metrics, step)
            return
        # An evaluation's rows hold its own keys only: nothing of the training's summary is overwritten.
        # "test" or "<checkpoint>/test": `test/acc` stays (or becomes `last/test/acc`), `val/acc` of a
        # validate becomes `validate/val/acc` (or `last/validate/val/acc`).
        checkpoint, _, subcommand = self.evaluation.rpartition("/")
        head = f"{checkpoint}/" if checkpoint else ""
        keys = {k: v for k, v in metrics.items() if k not in TRAINING_KEYS}
        named = {head + (k if k.startswith(f"{subcommand}/") else f"{subcommand}/{k}"): v for k, v in keys.items()}
        self.experiment.log(named)

    def log_hyperparams(self, params) -> None:
        if self.evaluation:  # the run's config is its training's
            return
        # Held until the run exists; attached by the thread that starts it.
        with self._lock:
            if self.current_run is not None:
                super().log_hyperparams(params)
            else:
                self._pending_hparams = params

    def attach_config(self, config_yaml: str, values: dict) -> None:
        """The resolved config as the run's config and as a file named CONFIG_FILE among its files,
        when the run starts (an evaluation's: the file only, under evaluations/<its folder>/)."""
        with self._lock:
            self._pending_config = (config_yaml, values)
            if self.current_run is not None:
                self._attach_pending(self.current_run)

    def _attach_pending(self, run) -> None:
        if self.mode == "disabled":
            self._pending_hparams = self._pending_config = None
            return
        if self._pending_hparams is not None:
            params, self._pending_hparams = self._pending_hparams, None
            if not self.evaluation:
                super().log_hyperparams(params)
        if self._pending_config is not None:
            (config_yaml, values), self._pending_config = self._pending_config, None
            folder = Path(run.dir)
            if self.evaluation:
                folder = folder / EVALUATIONS / Path(self.save_dir).name
                folder.mkdir(parents=True, exist_ok=True)
            else:
                run.config.update(values, allow_val_change=True)
            path = folder / CONFIG_FILE
            path.write_text(config_yaml)
            run.save(str(path), base_path=run.dir, policy="now")

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if self.checkpoint_artifacts and self._artifacts_wanted():
            super().after_save_checkpoint(checkpoint_callback)

    def finalize(self, status: str) -> None:
        if self.checkpoint_artifacts and self._artifacts_wanted():
            super().finalize(status)

    def _artifacts_wanted(self) -> bool:
        """Checkpoints go to W&B from a training run that reaches W&B (disabled: nothing is made)."""
        if rank_zero_only.rank != 0 or self.evaluation:
            return False
        try:
            self.wait()
        except CnnlabError:
            return False
        return self.mode in ("online", "offline")

    def sync_command(self) -> str | None:
        """The one-line shell command that uploads this run's offline files: its own folder, those of
        earlier parts of the run (a resumed fit) and of the evaluations that logged into it, oldest
        first; None when the run is online or disabled (or never started)."""
        if self.mode != "offline" or self._sync_dir is None:
            return None
        run_dir = Path(self.save_dir)
        if self.evaluation and run_dir.parent.name == EVALUATIONS:
            run_dir = run_dir.parent.parent
        roots = [self._sync_dir.parent, run_dir / "wandb", *run_dir.glob(f"{EVALUATIONS}/*/wandb")]
        if os.environ.get("WANDB_DIR"):
            roots.append(Path(os.environ["WANDB_DIR"]) / "wandb")
        recorded = (read_summary(run_dir).get("wandb") or {}).get("offline_dir")
        if recorded:  # the fit's folder, wherever WANDB_DIR put it then
            roots.append(Path(recorded).parent)
        dirs = offline_dirs(self.version, roots) or [self._sync_dir]
        return "wandb sync " + " ".join(shell_path(d) for d in dirs)

    def finish(self, failed: bool) -> None:
        """Close this run now, not at interpreter exit: the next run in the same process (a seed
        worker, a test) would otherwise log into it. An evaluation leaves its training run's state
        as the training left it (its own record says whether it failed)."""
        if self._starter is not None or self.current_run is not None:
            try:
                run = self.wait()
            except CnnlabError:
                return
            if run is not None:
                run.finish(exit_code=1 if failed and not self.evaluation else 0)
