"""`--ckpt_path`: which file it means, and how the checkpoint and the config agree.

- `best` / `last` mean the best / last checkpoint of the experiment's newest run that can serve: for
  validate, test and predict (and `fit --ckpt_path best`) a finished run; for `fit --ckpt_path last` any
  run with a last.ckpt, which resumes an unfinished run and continues a finished one. Smoke tests
  (fast_dev_run) never serve. The command says which run it took.
- A checkpoint of another model class than the config's is refused, naming both.
- The model is built with the checkpoint's arguments where the config *files* differ from them (the
  run was trained with those), and says so. Model arguments given *on the command line* beside
  `--ckpt_path` that differ from the checkpoint's are applied, visibly: a test with more importance
  samples uses them; a resume with a lower learning rate trains with it from the step it resumes at
  (`ResumeChanges`). Changes the checkpoint's weights cannot take (another width, another backbone) are
  refused with the list of differences. Optimiser settings do nothing in an evaluation: said, not used.
- A resume whose schedule was planned for a number of steps (one-cycle) is refused if the settings that
  decide the number of steps changed, before anything is written.
"""

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from cnnlab.command_line import short
from cnnlab.errors import CnnlabError
from cnnlab.records import CHECKPOINT_KEY, file_sha256, process_gone, read_record, read_summary
from cnnlab.run_dir import CHECKPOINTS, run_dir_of, run_dirs

LINKED = ("image_shape", "num_classes", "class_names")  # DataModule properties linked into the model
TRAINING = ("optimizer", "lr_scheduler")
# Data settings that define the task a model was trained for: an evaluation with others is another task
# (normal_classes [0] for a model of [7] scores its anomalies backwards), so they come from the checkpoint.
TASK = ("normal_classes", "normalize", "binarize", "canvas")  # model arguments that only matter while training
# Settings that decide how many steps a run takes: a schedule planned over the whole run needs them unchanged.
PLAN = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.limit_train_batches",
    "trainer.accumulate_grad_batches",
    "trainer.devices",
    "trainer.num_nodes",
    "data.init_args.batch_size",
    "data.init_args.val_size",
    "data.init_args.max_train_samples",
    "data.init_args.normal_classes",
    "data.init_args.train_scenes",
)


@dataclass
class Checkpoint:
    """What cnnlab reads from a checkpoint file before building anything."""

    path: Path
    run_dir: Path | None  # the training run it belongs to
    class_path: str | None
    hparams: dict
    meta: dict  # checkpoint["cnnlab"]: seed, data seed, experiment, run directory, config
    global_step: int | None
    planned_steps: list[int] = field(default_factory=list)  # total_steps of schedules planned over the run
    state_dict: dict = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int | None:
        return self.meta.get("seed")

    @property
    def run_finished(self) -> bool:
        return self.run_dir is not None and read_summary(self.run_dir).get("status") == "finished"


# -- --ckpt_path best | last ---------------------------------------------------------------------------


@dataclass
class RunOnRecord:
    """A directory of the experiment as its record tells it, for `--ckpt_path best|last`."""

    path: Path
    record: dict  # summary.json; empty where there is none or it cannot be read

    @property
    def training(self) -> bool:
        return self.record.get("kind") == "training"

    @property
    def smoke(self) -> bool:
        """A fast_dev_run: one batch, not a model. Records written before `smoke` existed say it in
        their config."""
        trainer = (self.record.get("config") or {}).get("trainer") or {}
        return bool(self.record.get("smoke") or (isinstance(trainer, dict) and trainer.get("fast_dev_run")))

    @property
    def status(self) -> str:
        status = self.record.get("status") or "unknown"
        if status == "running" and process_gone(self.record.get("process")):
            return "interrupted"  # killed (kill -9, a lost node): nothing marked it yet
        return status

    @property
    def when(self) -> str:
        """When the run last finished or stopped (the record's `finished`); for a run that is running or
        was killed without a word, when it last started (`started`, or its last resume). A resume keeps
        the `finished` of the stop before it, so the later of the two counts."""
        times = [self.record.get("started"), *(r.get("at") for r in self.record.get("resumes") or [])]
        if self.record.get("status") != "running":
            times.append(self.record.get("finished"))
        return max((str(t) for t in times if t), default="")

    def checkpoint(self, name: str) -> Path | None:
        """The run's own best / last file. The record's best path names the file, but the run's own
        folder is where it is looked for: a run copied elsewhere still points at the original."""
        stored = self.record.get("best_checkpoint") if name == "best" else None
        path = self.path / CHECKPOINTS / (Path(stored).name if stored else f"{name}.ckpt")
        return path if path.is_file() else None

    def kind(self, name: str) -> str:
        """What the run is for `--ckpt_path <name>`, in a few words (why it cannot serve, if it cannot)."""
        if not self.record:
            return "without a readable record"
        if self.smoke:
            return "fast_dev_run smoke test"
        if self.checkpoint(name) is None:
            return f"{self.status} without {name}.ckpt"
        return self.status


def runs_of(experiment_dir: Path) -> list[RunOnRecord]:
    """The training runs of an experiment, by their records (an evaluation of a foreign checkpoint that
    lives beside them is no run)."""
    found = [RunOnRecord(path, read_summary(path)) for path in run_dirs(experiment_dir)]
    return [run for run in found if run.training or not run.record]


def serves(run: RunOnRecord, name: str, resuming: bool) -> bool:
    """Whether a run can serve `--ckpt_path <name>`: never a smoke test; a finished run for an evaluation
    (an unfinished run's checkpoints change under it, a failed one may be anything); for `fit --ckpt_path
    last` also an unfinished run, which is then resumed in place."""
    if not run.record or run.smoke or run.checkpoint(name) is None:
        return False
    return resuming or run.status == "finished"


def newest(run: RunOnRecord) -> tuple[str, str]:
    """The record's time (finished, else last started), then the claim order (the directory's name,
    `<time>-seed<s>[-k]`) between runs of the same second. File times are not used: copying or syncing
    a run directory changes them, and a run's checkpoints are rewritten by its resumes."""
    return run.when, run.path.name


def tally(runs: list[RunOnRecord], name: str) -> str:
    """What the runs are, counted: "1 fast_dev_run smoke test, 1 interrupted"."""
    kinds: dict[str, int] = {}
    for run in runs:
        kinds[run.kind(name)] = kinds.get(run.kind(name), 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in kinds.items())


def short_time(stamp: str) -> str:
    return stamp.replace("T", " ")[:16]


def describe_pick(run: RunOnRecord, name: str) -> str:
    """What the note says of the run it took: when it ended, and the score it is known by."""
    record, status = run.record, run.status
    what = f"{status} {short_time(run.when)}" if status != "running" else f"running since {short_time(run.when)}"
    monitor = record.get("monitor")
    score = record.get("best_score") if name == "best" else (record.get("metrics") or {}).get(monitor)
    if monitor and isinstance(score, int | float):
        what += f", {'best ' if name == 'best' else ''}{monitor} {score:.4g}"
    return what


def resolve(ckpt: str, root: Path, experiment: str, subcommand: str = "test") -> tuple[Path, str | None]:
    """`best` / `last` or a path, as an existing file, and for best / last one line that says which run
    was taken (the CLI prints it). The rule is the module docstring's."""
    if ckpt not in ("last", "best"):
        path = Path(ckpt)
        if not path.is_file():
            raise CnnlabError(
                f"--ckpt_path {ckpt}: no such file. Give a checkpoint file (e.g. "
                f"{root}/{experiment}/<run>/{CHECKPOINTS}/best.ckpt), or 'best' / 'last' for the newest finished "
                f"run of '{experiment}'."
            )
        return path, None
    resuming = subcommand == "fit" and ckpt == "last"
    runs = runs_of(root / experiment)
    chosen = max((run for run in runs if serves(run, ckpt, resuming)), key=newest, default=None)
    if chosen is None:
        raise CnnlabError(nothing_serves(ckpt, root, experiment, runs, resuming))
    path = chosen.checkpoint(ckpt)
    shown = root / experiment / chosen.path.name / CHECKPOINTS / path.name
    what = describe_pick(chosen, ckpt)
    if resuming:
        what += ": continued in a new run" if chosen.status == "finished" else ": resumed in its own directory"
    passed = [run for run in runs if not serves(run, ckpt, resuming) and run.record and newest(run) > newest(chosen)]
    if passed:
        what += f"; passed over newer: {tally(passed, ckpt)}"
    return path, f"--ckpt_path {ckpt} -> {shown} ({what})"


def nothing_serves(ckpt: str, root: Path, experiment: str, runs: list[RunOnRecord], resuming: bool) -> str:
    """The paragraph for best / last when no run can serve: what was found, and what to do."""
    where = f"{root}/{experiment}/"
    if not runs:
        return (
            f"--ckpt_path {ckpt}: no earlier run of '{experiment}' under {root}/ has a checkpoint ({where}*/"
            f"{CHECKPOINTS}/{ckpt}.ckpt). Train one first (python train.py fit --config ...), or give the "
            "checkpoint's path."
        )
    if resuming:
        rule = f"the newest run of '{experiment}' (finished or not) that has a last.ckpt and is no smoke test"
        advice = "Start a new run (fit without --ckpt_path), or give a checkpoint's path to --ckpt_path."
    else:
        rule = f"the newest finished run of '{experiment}' that has a {ckpt}.ckpt and is no smoke test"
        advice = f"Give a checkpoint's path instead (--ckpt_path {where}<run>/{CHECKPOINTS}/{ckpt}.ckpt)"
        unfinished = [
            run
            for run in runs
            if run.record and not run.smoke and run.status != "finished" and run.checkpoint("last") is not None
        ]
        run = max(unfinished, key=newest, default=None)
        if run is not None and run.status == "running":
            advice += f", or wait for the run that is still training ({run.path.name}) to finish"
        elif run is not None:
            last = root / experiment / run.path.name / CHECKPOINTS / "last.ckpt"
            advice += f", or finish the {run.status} run first: python train.py fit --config ... --ckpt_path {last}"
        else:
            advice += ", or train a run to its end (python train.py fit --config ...); an unfinished run is resumed "
            advice += "with fit --ckpt_path <its last.ckpt>"
        advice += "."
    found = f"{len(runs)} run{'s' if len(runs) != 1 else ''}: {tally(runs, ckpt)}"
    return f"--ckpt_path {ckpt} takes {rule} (fast_dev_run), but none under {where} is one ({found}). {advice}"


def read(path: Path) -> Checkpoint:
    try:
        raw = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as err:
        raise CnnlabError(
            f"--ckpt_path {path} cannot be read as a checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no message'}). It may have been cut short by an "
            "interrupted save, or not be a checkpoint at all; give another (e.g. the run's last.ckpt) or train again."
        ) from err
    hparams = dict(raw.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    planned = [
        int(state["total_steps"])
        for state in raw.get("lr_schedulers") or []
        if isinstance(state, dict) and state.get("total_steps") is not None
    ]
    state_dict = raw.get("state_dict") or {}
    check_finite(path, state_dict)
    run_dir = run_dir_of(path)
    if run_dir is not None:
        check_digest(path, run_dir)
    return Checkpoint(
        path=path.resolve(),
        run_dir=run_dir,
        class_path=class_path,
        hparams=hparams,
        meta=dict(raw.get(CHECKPOINT_KEY) or {}),
        global_step=raw.get("global_step"),
        planned_steps=planned,
        state_dict=state_dict,
    )


def check_finite(path: Path, state_dict: dict) -> None:
    """Weights that hold NaN or infinity give nothing but NaN scores (and tracebacks in figures)."""
    bad = [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CnnlabError(
            f"--ckpt_path {path} holds non-finite weights (NaN or infinity in {names}): the run diverged before "
            "this checkpoint was saved, or the file was changed. Use a checkpoint saved before the divergence "
            "(cnnlab's own runs keep only finite states in last.ckpt), or train again with a lower learning rate."
        )


def check_digest(path: Path, run_dir: Path) -> None:
    """A checkpoint of one of our finished runs must still be the file its run wrote (the SHA-256 in
    the run's record, matched by file name, so a run directory moved elsewhere is still checked): a
    changed file would be evaluated, and recorded, as the run's. An unfinished run's checkpoints
    change with each resume, so only a finished run's are checked."""
    summary = read_record(run_dir)
    if summary.get("status") != "finished":
        return
    for entry in (summary.get("checkpoints") or {}).values():
        if not isinstance(entry, dict) or Path(entry.get("path", "")).name != path.name:
            continue
        digest = file_sha256(path)
        if digest != entry.get("sha256"):
            raise CnnlabError(
                f"--ckpt_path {path}: its bytes changed since its run wrote it (SHA-256 {digest[:12]}..., the run's "
                f"record {run_dir}/summary.json says {str(entry.get('sha256'))[:12]}...). An evaluation of it would "
                "be recorded as the run's. Use the run's other checkpoint, or, if you changed it on purpose, copy "
                "it out of the run's checkpoints/ folder and evaluate the copy (a record of its own)."
            )


# -- comparing settings ------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A parsed or saved setting as plain data (namespaces as dicts, tuples as lists)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are leaves."""
    if not isinstance(value, dict) or not value:
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return out


def get(config: Namespace | dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if isinstance(value, Namespace | dict):
            value = value.get(part)
        else:
            return None
    return plain(value)


def given_on_command_line(key: str, explicit: dict[str, str], section: str) -> bool:
    """Whether `section.key` (short form) or a section above it was set on the command line."""
    parts = f"{section}.{key}".split(".")
    return any(".".join(parts[:n]) in explicit for n in range(1, len(parts) + 1))


def describe(differences: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key} {now!r} (checkpoint: {then!r})" for key, (now, then) in differences.items())


@dataclass
class Agreement:
    """How a command's config was reconciled with its checkpoint."""

    from_checkpoint: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # config value, checkpoint value
    applied: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # given value, checkpoint value
    ignored: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    task: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # data settings taken from the checkpoint
    training_changed: bool = False  # optimiser/scheduler settings differ on a resume: ResumeChanges applies them

    def record(self) -> dict:
        out = {}
        for name in ("from_checkpoint", "applied", "ignored", "task"):
            values = getattr(self, name)
            if values:
                out[name] = {key: {"now": now, "checkpoint": then} for key, (now, then) in values.items()}
        return out

    def notes(self) -> list[str]:
        notes = []
        if self.from_checkpoint:
            notes.append(
                "the model is built with the checkpoint's arguments where the config differs: "
                + describe(self.from_checkpoint)
            )
        if self.applied:
            notes.append("applied as given on the command line: " + describe(self.applied))
        if self.ignored:
            notes.append("ignored, optimiser settings do nothing in an evaluation: " + describe(self.ignored))
        if self.task:
            notes.append(
                "the data is set up for the task the checkpoint was trained for: "
                + "; ".join(f"{key} {then!r} (the config says {now!r})" for key, (now, then) in self.task.items())
            )
        return notes


def reconcile(config: Namespace, checkpoint: Checkpoint, explicit: dict[str, str], subcommand: str) -> Agreement:
    """Compare the parsed config's model with the checkpoint's; refuse another model class; put the
    checkpoint's values where only the config files differ (returned as `from_checkpoint`). Explicit
    differences stay in the config and are sorted into applied and ignored."""
    wanted = config.model.get("class_path") if isinstance(config.model, Namespace) else None
    if checkpoint.class_path and wanted and checkpoint.class_path != wanted:
        raise CnnlabError(
            f"--ckpt_path {checkpoint.path} holds a {checkpoint.class_path}, but the config builds a {wanted}. "
            "A checkpoint is evaluated or resumed with the model it was trained as: give the config it was "
            "trained with (its run's config.yaml, or the experiment's YAML), or a checkpoint of this model."
        )
    agreement = Agreement()
    if not checkpoint.hparams:
        return agreement
    parsed = plain(config.model.get("init_args") or {})
    saved = plain(checkpoint.hparams)
    current, stored = flatten(parsed), flatten(saved)
    for key in sorted(set(current) | set(stored)):
        top = key.split(".")[0]
        if top in LINKED or key not in stored:
            continue  # linked from the data either way; a setting the checkpoint predates keeps its default
        now, then = current.get(key), stored.get(key)
        if now == then:
            continue
        name = short(key)
        if given_on_command_line(name, explicit, "model"):
            if top in TRAINING and subcommand != "fit":
                agreement.ignored[name] = (now, then)
            else:
                agreement.applied[name] = (now, then)
                agreement.training_changed |= top in TRAINING
        else:
            agreement.from_checkpoint[name] = (now, then)
            set_leaf(parsed, key, then)
    if agreement.from_checkpoint:
        config.model.init_args = to_namespace(parsed)
    return agreement


def reconcile_task(config: Namespace, checkpoint: Checkpoint, explicit: dict[str, str], agreement: Agreement) -> None:
    """An evaluation runs on the task its checkpoint was trained for (TASK): the checkpoint's value where
    the config's differs, said in the notes; a different value given on the command line is refused."""
    trained = checkpoint.meta.get("config")
    if not isinstance(trained, dict) or not isinstance(config.get("data"), Namespace):
        return
    if trained.get("data", {}).get("class_path") != config.data.get("class_path"):
        return  # other data altogether: its settings mean other things
    for name in TASK:
        key = f"data.init_args.{name}"
        if name not in (config.data.get("init_args") or {}) or name not in trained["data"].get("init_args", {}):
            continue
        now, then = get(config, key), get(trained, key)
        if now == then:
            continue
        if given_on_command_line(name, explicit, "data"):
            raise CnnlabError(
                f"--data.{name} {now!r} differs from the {then!r} that {checkpoint.path} was trained with; {name} "
                "defines the task (which digits are normal, what the pixels mean), so the model's scores would "
                f"answer another question. Leave --data.{name} out to evaluate the task it was trained for, or "
                f"train a model with {name} {now!r}."
            )
        config[key] = then
        agreement.task[f"data.{name}"] = (now, then)


def set_leaf(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def to_namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return Namespace(**{key: to_namespace(item) for key, item in value.items()})
    return value


def check_weights_fit(model: torch.nn.Module, checkpoint: Checkpoint, agreement: Agreement) -> None:
    """Refuse, before anything is written, a model whose parameters and buffers the checkpoint's weights
    cannot take (another width, another backbone): the same names and shapes. Lightning loads the
    weights itself when the command runs; they are not loaded twice."""
    if not checkpoint.state_dict:
        return
    expected = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    saved = {k: v for k, v in checkpoint.state_dict.items() if isinstance(v, torch.Tensor)}
    problems = [f"missing {k}" for k in expected if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in expected]
    problems += [
        f"{k} is {tuple(saved[k].shape)} in the checkpoint, {tuple(v.shape)} here"
        for k, v in expected.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if problems:
        changed = agreement.applied or agreement.from_checkpoint
        what = f"the model arguments given differ: {describe(changed)}" if changed else "the model differs"
        listed = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CnnlabError(
            f"The weights in {checkpoint.path} do not fit the model this command builds ({what}; {listed}). "
            "Leave out the arguments that change the network's shape, or train a new run with them."
        )


def check_schedule_plan(config: Namespace, checkpoint: Checkpoint) -> None:
    """A schedule planned over the whole run (one-cycle's total_steps) cannot stretch: refuse a resume
    that changes what decides the number of steps, before anything is written."""
    before = checkpoint.meta.get("config")
    if not checkpoint.planned_steps or not isinstance(before, dict):
        return
    changed = {short(key): (get(config, key), get(before, key)) for key in PLAN}
    changed = {key: values for key, values in changed.items() if values[0] != values[1]}
    if changed:
        raise CnnlabError(
            f"The learning-rate schedule in {checkpoint.path} was planned for {checkpoint.planned_steps[0]} steps "
            f"with the run's settings, but this resume changes what decides the number of steps: "
            f"{describe(changed)}. Resume with the settings the run started with, or start a new run for the "
            "new budget."
        )


# -- applying optimiser and schedule changes on a resume -----------------------------------------------


def _parts(configured) -> tuple[torch.optim.Optimizer, dict | None]:
    """cnnlab's configure_optimizers returns an optimizer or {"optimizer", "lr_scheduler": {...}}."""
    if isinstance(configured, dict):
        return configured["optimizer"], configured.get("lr_scheduler")
    return configured, None


class ResumeChanges(Callback):
    """On a resume with other optimiser or scheduler settings than the checkpoint's: after Lightning has
    restored the optimizer (its moments) and the schedule, rebuild both from the settings given, keep
    the optimizer's state, and bring the new schedule to the step the run resumes at, so training goes
    on with the new learning rate from that step."""

    def __init__(self, changes: dict[str, tuple[Any, Any]] | None = None) -> None:
        self.changes = dict(changes or {})

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise CnnlabError(
                "Changing optimiser settings on a resume is supported for one optimizer, but this model has "
                f"{len(trainer.optimizers)}. Resume with the settings the run started with."
            )
        old = trainer.optimizers[0]
        optimizer, scheduler = _parts(pl_module.configure_optimizers())
        optimizer.state = old.state  # moments and step counts, keyed by the same parameters
        trainer.strategy.optimizers = [optimizer]
        if scheduler is not None and trainer.lr_scheduler_configs:
            config = trainer.lr_scheduler_configs[0]
            config.scheduler = scheduler["scheduler"]
            done = trainer.global_step if config.interval == "step" else trainer.current_epoch
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": on purpose
                for _ in range(done):
                    config.scheduler.step()
        with contextlib.suppress(IndexError, KeyError):
            lr = optimizer.param_groups[0]["lr"]
            print(f"cnnlab: resuming at step {trainer.global_step} with {describe(self.changes)}; lr now {lr:.4g}")
