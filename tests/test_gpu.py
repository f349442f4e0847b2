"""The GPU paths, where a GPU exists (skipped elsewhere, so in CI): the shipped GPU preset with
fp16 autocast and gradient scaling, the non-finite-loss guard's non-blocking mode on CUDA, and
steady-state training steps that never wait for the GPU. `bash benchmarks/gpu_check.sh` (before it
`benchmarks/gpu_suite.sh`) runs this file first on a lent GPU machine."""

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, only_run
from lightning.pytorch import Callback
from test_nonfinite_guard import fit as fit_until_nan

from callbacks.nonfinite_loss import NonFiniteLossGuard

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_amp_preset_fits_and_tests(run_cli, tiny_args, tmp_path):
    gpu = [*tiny_args, "--config", str(ROOT / "configs" / "trainer" / "gpu_amp.yaml")]
    run_cli("fit", gpu)
    run_cli("test", [*gpu, "--ckpt_path=best"])
    summary = json.loads((only_run(tmp_path) / "summary.json").read_text())
    assert summary["config"]["trainer"]["precision"] == "16-mixed"
    assert summary["config"]["trainer"]["accelerator"] == "gpu"
    assert summary["status"] == "finished"
    assert torch.isfinite(torch.tensor([summary["metrics"]["val/loss"], summary["metrics"]["test/loss"]])).all()


def test_the_guard_waits_for_no_step_on_cuda_and_still_stops_before_a_bad_checkpoint(tmp_path):
    guard = NonFiniteLossGuard()  # the default on CUDA: non-blocking
    model, message = fit_until_nan(tmp_path, guard, bad_batch=4, every_n_train_steps=1, accelerator="gpu")
    assert "became nan at step 5 (epoch 0, batch 4)" in message
    assert model.batches_run <= 5 + 2
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 4


class SteadyStateSyncCheck(Callback):
    """Makes any synchronizing CUDA call (a device value read back: `.item()`, `float(t)`, `bool(t)`,
    a blocking copy) raise during steady-state training steps: `torch.cuda.set_sync_debug_mode("error")`
    from training batch `first` on, from that batch's start until the next one's. A step that writes
    logs (every `log_every_n_steps`, and an epoch's last) reads its values back once by design and is
    left out, as are validation and the epoch's end. Writes the batches it checked to
    `sync_check.json` in the run directory."""

    first = 3  # the first steps set things up (cuDNN, the allocator, the guard's pinned buffer)

    def __init__(self) -> None:
        self.checked: list[int] = []

    @staticmethod
    def _off(*args, **kwargs) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        writes_logs = (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or trainer.is_last_batch
        if batch_idx >= self.first and not writes_logs:
            torch.cuda.set_sync_debug_mode("error")
            self.checked.append(batch_idx)
        else:
            torch.cuda.set_sync_debug_mode("default")

    on_validation_start = on_exception = _off

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._off()
        Path(trainer.default_root_dir, "sync_check.json").write_text(json.dumps({"checked": self.checked}))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._off()


# 16-mixed is left out: its GradScaler reads found_inf back at every optimizer step (torch.amp), by design.
@pytest.mark.parametrize("progress_bar", [True, False], ids=["progress-bar", "no-progress-bar"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_steady_state_training_steps_never_wait_for_the_gpu(run_cli, tiny_args, tmp_path, precision, progress_bar):
    """The main config through the CLI on CUDA: 30 steps, logging every 10, every step from the 4th on
    except the logging ones under sync debug mode "error". A step that reads a device value back
    (a per-step `.item()`, or the progress bar converting a logged tensor at every refresh) fails here,
    with the traceback of the read."""
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    args = [
        *tiny_args,
        "--trainer.accelerator=gpu",
        f"--trainer.precision={precision}",
        f"--trainer.enable_progress_bar={str(progress_bar).lower()}",
        "--data.batch_size=16",  # 500 training images: 31 batches, 30 of them run
        "--trainer.limit_train_batches=30",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=10",
        "--trainer.callbacks+=test_gpu.SteadyStateSyncCheck",
    ]
    try:
        run_cli("fit", args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    run = only_run(tmp_path)
    checked = json.loads((run / "sync_check.json").read_text())["checked"]
    assert checked == [b for b in range(3, 29) if (b + 1) % 10], checked  # 24 steps: all but 9, 19 and 29
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
