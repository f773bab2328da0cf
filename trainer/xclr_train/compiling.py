"""--compile: torch.compile of the encoder (the backbone and the projection head, traced as one graph), checked at
set-up.

The encoder is compiled in place (`nn.Module.compile`), so its state_dict keys are those of an uncompiled one:
checkpoints, resumes and exports do not change. torch compiles on the first step (and again for each new input shape
or mode), so that step takes the compile time. Whether the backend can run at all is checked before: torch.compile's
default backend (inductor) needs a C++ compiler on the CPU and Triton on a GPU, and torch.compile itself a Python
version it supports; `check_compile` compiles and runs a tiny function on the run's device, so a missing one is a
one-line error before any step rather than a traceback in the first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xclr_train.errors import TrainError, first_line
from xclr_train.models import Encoder


def compile_encoder(encoder: Encoder, device: torch.device) -> None:
    """`check_compile(device)`, then torch.compile `encoder` in place (module docstring)."""
    check_compile(device)
    encoder.compile()


def check_compile(device: torch.device) -> None:
    """TrainError, one line giving torch's reason, unless torch.compile (default backend) compiles and runs a tiny
    function on `device`. Inductor's kernel cache may serve the kernel without compiling it again; it checks the
    C++ compiler named by $CXX (or g++ on PATH) either way."""
    try:
        torch.compile(_tiny)(torch.ones(8, device=device))
    except Exception as exc:  # torch raises its backend's own error types, wrapped or not (BackendCompilerFailed)
        reason = getattr(exc, "inner_exception", None) or exc
        raise TrainError(f"--compile: torch.compile cannot run on the {device.type} here ({type(reason).__name__}: "
                         f"{first_line(reason)}); leave out --compile") from None


def _tiny(x: Tensor) -> Tensor:
    return (2 * x).sin() + 1
