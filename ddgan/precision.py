"""Mixed precision: what `--amp` means on each device, decided in one place for training and sampling."""

from __future__ import annotations

from contextlib import nullcontext

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def check_amp(amp: str | None) -> None:
    """Raise ValueError for an --amp value that is not bf16, fp16, none or None (the device's default)."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be bf16, fp16 or none, got {amp!r}")


def amp_dtype(amp: str | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for --amp on `device`; None (the default) is bf16 on CUDA and full float32 elsewhere."""
    check_amp(amp)
    if amp is None:
        amp = "bf16" if torch.device(device).type == "cuda" else "none"
    return AMP_DTYPES[amp]


def amp_name(dtype: torch.dtype | None) -> str:
    """The --amp value that selects `dtype` (the inverse of amp_dtype)."""
    return next(name for name, value in AMP_DTYPES.items() if value == dtype)


def autocast(device: torch.device | str, dtype: torch.dtype | None, cache_enabled: bool = True):
    """torch.autocast to `dtype` on the device, or a no-op context for dtype None.

    cache_enabled=False is needed inside a CUDA graph capture: cast weights may not outlive it.
    """
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype, cache_enabled=cache_enabled)
