"""The GPU paths, where a GPU exists (skipped elsewhere, so in CI): the shipped GPU preset with
fp16 autocast and gradient scaling, the non-finite-loss guard's non-blocking mode on CUDA, and
steady-state training steps that never wait for the GPU. `bash benchmarks/gpu_check.sh` (before it
`benchmarks/gpu_suite.sh`) runs this file first on a lent GPU machine."""

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, last_evaluation, only_run, summary_of
from lightning.pytorch import Callback
from test_nonfinite_guard import fit as fit_until_nan

from callbacks.nonfinite_loss import NonFiniteLossGuard
from datamodules import MNISTDataModule
from lightning_modules import ImageClassifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class AutocastSpy(Callback):
    """Records what one training step of the run computes in: the dtype of the model's first
    convolution's output (`feature_layer`) at training batch 1, and the gradient scaler's scale at
    that step's optimizer step (None without a scaler). Writes them to `amp_spy.json` in the run
    directory."""

    def __init__(self) -> None:
        self.seen: dict = {}
        self._hook = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 1:

            def record(module, inputs, output) -> None:  # None: the output goes on unchanged
                self.seen.setdefault("conv_output", str(output.dtype))

            self._hook = pl_module.feature_layer().register_forward_hook(record)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            self.seen["scale"] = None if scaler is None else float(scaler.get_scale())

    def on_train_end(self, trainer, pl_module) -> None:
        Path(trainer.default_root_dir, "amp_spy.json").write_text(json.dumps(self.seen))


def test_gpu_amp_preset_trains_in_fp16_with_gradient_scaling_and_tests_what_fp32_computes(run_cli, tiny_args, tmp_path):
    gpu = [*tiny_args, "--config", str(ROOT / "configs" / "trainer" / "gpu_amp.yaml")]
    run_cli("fit", [*gpu, "--trainer.callbacks+=test_gpu.AutocastSpy"])
    run = only_run(tmp_path)
    seen = json.loads((run / "amp_spy.json").read_text())
    # the preset's promise: convolutions under fp16 autocast, the loss scaled (GradScaler starts at 2**16)
    assert seen["conv_output"] == "torch.float16", seen
    assert seen["scale"] is not None and seen["scale"] > 1, seen
    best = summary_of(run)["best_checkpoint"]
    assert torch.load(best, weights_only=False)["MixedPrecision"]["scale"] > 1  # the scaler resumes too
    run_cli("test", [*gpu, "--ckpt_path=best"])
    tested = summary_of(last_evaluation(run, "test"))["metrics"]["test/loss"]
    # the same checkpoint in float32 on the CPU, on the run's own DataModule: fp16 autocast rounds the
    # logits to ~1e-3 relative, far inside the 2% allowed here
    data = MNISTDataModule(**summary_of(run)["config"]["data"]["init_args"])
    data.setup("test")
    images, labels = data.samples("test")
    model = ImageClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    with torch.no_grad():
        expected = model.per_sample_loss((data.model_input(images), labels)).mean().item()
    assert tested == pytest.approx(expected, rel=0.02)


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
