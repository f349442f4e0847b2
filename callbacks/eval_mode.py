"""Run a module for a figure without disturbing training: eval mode, no autograd, and every submodule's
own training flag put back afterwards (a frozen submodule stays in eval, a training one trains on)."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.inference_mode():
            yield module
    finally:
        for m, training in flags.items():
            m.training = training
