"""One owner for numeric precision: what `auto` means on this machine, the autocast of every forward pass (training,
evaluation, the fp32 recheck of close calls, the Reader) and fp16's loss scaling.

accelerate is set up with mixed_precision="no" and never wraps the model's forward in autocast: a baked-in autocast
overrides any inner `autocast(enabled=False)`, so a recheck "in fp32" inside a bf16 run was bf16 again.
"""

from __future__ import annotations

import shutil
import subprocess

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 where the device runs it natively (CUDA capability 8.0+, i.e. Ampere and newer; CPUs with
    AVX512-BF16 or AMX), fp16 with loss scaling on older GPUs (V100, T4: bf16 is only emulated there), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    if device.type == "cpu":
        return "bf16" if any(cpu_bf16_support().values()) else "no"
    return "no"


def precision_name(precision: str) -> str:
    """A resolved precision as people name it: "no" (no mixed precision) is fp32."""
    return "fp32" if precision == "no" else precision


def cpu_bf16_support() -> dict[str, bool]:
    """The CPU features that make bf16 native here (torch's own cpuid probes; False where this torch has none)."""
    return {flag: getattr(torch.cpu, f"_is_{flag}_supported", lambda: False)() for flag in ("avx512_bf16", "amx_tile")}


def autocast(device: torch.device, precision: str):
    """The autocast context of a forward pass at `precision` ("no": full precision, also inside another autocast)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def unseen_gpus_warning() -> str | None:
    """A warning when nvidia-smi lists GPUs that the installed torch cannot use (a CPU build), else None."""
    if torch.cuda.is_available() or shutil.which("nvidia-smi") is None:
        return None
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = [line for line in listed.splitlines() if line.startswith("GPU ")]
    if not gpus:
        return None
    return (f"warning: nvidia-smi lists {len(gpus)} GPU(s) but torch {torch.__version__} cannot use them (a CPU build, or "
            "a CUDA build that does not match the driver): this run trains on the CPU. Install a CUDA build of torch, "
            "e.g. `make TORCH=torch install` or pip install torch from the index for your CUDA version")


class LossScaler:
    """fp16's dynamic loss scaling (torch's GradScaler); for bf16 and fp32 every method is a pass-through.

    With fused AdamW the scaler skips an overflowed step inside the optimizer kernel, without waiting for the device;
    knowing on the host that a step was skipped (so that the lr schedule does not advance) costs one wait per fp16 step.
    """

    def __init__(self, precision: str, device: torch.device):
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self._scale = self.scaler.get_scale() if self.scaler else None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale_(self, optimizer) -> None:
        """Before gradient clipping: the norm of the true gradients, not of the scaled ones."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> bool:
        """The optimizer step; False when fp16 found inf/NaN gradients and skipped it (the scale is then lowered)."""
        if not self.scaler:
            optimizer.step()
            return True
        self.scaler.step(optimizer)
        self.scaler.update()
        before, self._scale = self._scale, self.scaler.get_scale()  # lowered only after a skipped step
        return self._scale >= before

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
            self._scale = self.scaler.get_scale()
