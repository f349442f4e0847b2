"""The GPU paths, where a GPU exists (skipped elsewhere, so in CI): the shipped GPU preset with
fp16 autocast and gradient scaling, and the non-finite-loss guard's non-blocking mode on CUDA.
`bash benchmarks/gpu_suite.sh` runs this file first on a lent GPU machine."""

import json

import pytest
import torch
from conftest import ROOT, only_run
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
