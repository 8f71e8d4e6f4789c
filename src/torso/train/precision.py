"""Mixed precision: which kind a device gets, autocast around the forward pass, and for fp16 a
gradient scaler around backward and the optimiser step (bf16 needs none: its range is float32's).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from torso.errors import TorsoError

PRECISIONS = ("no", "bf16", "fp16")


def choose_precision(requested: str | None, device: torch.device) -> str:
    """`"bf16"`, `"fp16"` or `"no"` for `device`.

    `requested` None: bf16 on a CUDA device that has it, else fp16 on CUDA; none on the CPU (bf16
    on a CPU without bf16 instructions is an order of magnitude slower). fp16 needs CUDA.
    """
    if requested is not None and requested not in PRECISIONS:
        raise TorsoError(f"mixed_precision must be 'bf16', 'fp16' or 'no', got {requested!r}")
    if requested is not None:
        if requested == "fp16" and device.type != "cuda":
            raise TorsoError("fp16 mixed precision needs a CUDA device; use 'bf16' or 'no'")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


class Precision:
    """The numeric precision of a training loop.

    `autocast()` wraps a forward pass; `backward(loss)` and `step(optimizer)` go through a
    `GradScaler` for fp16 (which skips a step whose gradients overflowed) and are plain
    `loss.backward()` and `optimizer.step()` otherwise.
    """

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in PRECISIONS:
            raise TorsoError(f"mixed_precision must be 'bf16', 'fp16' or 'no', got {mode!r}")
        self.mode = mode
        self.device = device
        self.scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        """A context for the forward pass (and the loss) in the chosen precision."""
        if self.mode == "no":
            return nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate `loss` (scaled for fp16)."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """One optimiser step (unscaled, and skipped on overflow, for fp16)."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state as plain JSON values (None without a scaler)."""
        if self.scaler is None:
            return None
        state = self.scaler.state_dict()
        return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore what `state_dict` returned."""
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)
