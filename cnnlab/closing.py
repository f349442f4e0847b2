"""The short block a command prints when it ends: what happened (status, best score and checkpoint,
the evaluation's metrics), where its record is, and the next command to run (test, resume or sync).
Built from the record the command just wrote, so it says what the record says."""

import shlex
from pathlib import Path

from cnnlab.records import SUMMARY
from cnnlab.shell_paths import shown_path, train_command

MAX_METRICS = 6  # an evaluation's block names its primary metrics, not every per-class value


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _shown(path: str | Path | None, base: Path) -> str:
    return "-" if path is None else shown_path(path, base)


def _metrics_line(metrics: dict, stage: str) -> str:
    own = {k: v for k, v in metrics.items() if k.startswith(f"{stage}/") and isinstance(v, int | float)}
    # The headline values first (acc, auroc, loss), then the rest, at most MAX_METRICS of them.
    order = sorted(own, key=lambda k: (not k.endswith(("/acc", "/auroc")), not k.endswith("/loss"), k))
    shown = ", ".join(f"{k} {_number(own[k])}" for k in order[:MAX_METRICS])
    more = len(order) - MAX_METRICS
    return shown + (f" (+{more} more in the record)" if more > 0 else "") if shown else "no metrics logged"


def closing_block(
    subcommand: str,
    summary: dict,
    output_dir: Path,
    run_dir: Path | None,
    sync_command: str | None = None,
    wandb_line: str | None = None,
    cwd: Path | None = None,
) -> str:
    """The lines a command prints at its end, from its record `summary` (summary.json of `output_dir`)."""
    base = (cwd or Path.cwd()).resolve()
    status = summary.get("status") or "unknown"
    config = shlex.quote(_shown(output_dir / "config.yaml", base))
    lines = [f"{subcommand} {status}: {_shown(output_dir, base)}"]
    if subcommand == "fit":
        best, monitor = summary.get("best_checkpoint"), summary.get("monitor")
        if best and summary.get("best_score") is not None:
            lines.append(f"  best      {monitor} {_number(summary['best_score'])} -> {_shown(best, base)}")
        last = summary.get("last_checkpoint") or (summary.get("checkpoints") or {}).get("last", {}).get("path")
        if last:
            step = summary.get("global_step")
            lines.append(f"  last      {_shown(last, base)}" + (f" (step {step})" if step is not None else ""))
        metrics = summary.get("metrics") or {}
        if any(k.startswith("val/") for k in metrics):
            lines.append(f"  final     {_metrics_line(metrics, 'val')}")
    else:
        stage = {"validate": "val"}.get(subcommand, subcommand)
        if subcommand == "predict":
            files = sorted(p.name for p in output_dir.glob("predictions*") if p.is_file())
            lines.append(f"  wrote     {', '.join(files) or 'no prediction files'}")
        else:
            lines.append(f"  metrics   {_metrics_line(summary.get('metrics') or {}, stage)}")
        checkpoint = (summary.get("checkpoint") or {}).get("path")
        lines.append(
            f"  weights   {_shown(checkpoint, base) if checkpoint else 'freshly initialised (no --ckpt_path)'}"
        )
    lines.append(f"  record    {_shown(output_dir / SUMMARY, base)}")
    if wandb_line:
        lines.append(f"  W&B       {wandb_line}")
    next_command, train = None, shlex.join(train_command(base))
    if summary.get("smoke"):
        lines[0] += " (a smoke test: fast_dev_run; --ckpt_path best/last never pick it)"
    elif subcommand == "fit" and status == "finished":
        best = summary.get("best_checkpoint") or summary.get("last_checkpoint")
        if best:
            next_command = f"{train} test --config {config} --ckpt_path {shlex.quote(_shown(best, base))}"
    elif subcommand == "fit" and status in ("interrupted", "failed"):
        last = (summary.get("checkpoints") or {}).get("last", {}).get("path") or summary.get("last_checkpoint")
        if last and Path(last).is_file():
            next_command = f"{train} fit --config {config} --ckpt_path {shlex.quote(_shown(last, base))}"
    if next_command:
        lines.append(f"  next      {next_command}")
    if sync_command:
        lines.append(f"  sync      {sync_command}")
    return "\n".join(lines)
