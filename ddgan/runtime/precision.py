"""Mixed precision: what `--amp` means on each device, decided in one place for training and sampling.

`--amp=auto` (the default) is bf16 autocast on CUDA, and on a CPU with native bf16 instructions
(AVX512-BF16 or AMX) for networks of at least AUTO_CPU_MIN_PARAMETERS parameters, where it pays
(BENCHMARKS.md has the measurements behind the threshold); float32 otherwise.
"""

from __future__ import annotations

import functools
import warnings
from contextlib import nullcontext

import torch

from networks import count_parameters
from ops.cpu_library import cpuinfo_value

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
AMP_CHOICES = ("auto", *AMP_DTYPES)
# Below this generator size the per-op cost of casting outweighs bf16's faster matrix products on the CPU.
AUTO_CPU_MIN_PARAMETERS = 10_000_000
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def check_amp(amp: str | None) -> None:
    """Raise ValueError for an --amp value that is not auto, bf16, fp16, none or None (= auto)."""
    if amp is not None and amp not in AMP_CHOICES:
        raise ValueError(f"--amp must be auto, bf16, fp16 or none, got {amp!r}")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), as /proc/cpuinfo reports it."""
    flags = (cpuinfo_value("flags", "Features") or "").split()  # x86, ARM
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def amp_dtype(amp: str | None, device: torch.device | str, parameters: int | None = None) -> torch.dtype | None:
    """The autocast dtype for --amp on `device` for a network of `parameters` parameters (see the module)."""
    check_amp(amp)
    device = torch.device(device)
    if amp in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16
        large = parameters is not None and parameters >= AUTO_CPU_MIN_PARAMETERS
        return torch.bfloat16 if device.type == "cpu" and large and cpu_has_native_bf16() else None
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warn_slow_bf16()
    return AMP_DTYPES[amp]


def channels_last_default(device: torch.device | str, dtype: torch.dtype | None) -> bool:
    """NHWC where it is faster, for training and sampling alike: on CUDA, and for bf16 on the CPU (oneDNN's
    layout; BENCHMARKS.md)."""
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and dtype is torch.bfloat16)


@functools.lru_cache(maxsize=1)
def warn_slow_bf16() -> None:
    """Warn once that bf16 is emulated on this CPU."""
    warnings.warn("--amp=bf16: this CPU has no native bf16 instructions (AVX512-BF16 or AMX), so bf16 is emulated "
                  "and likely slower than float32; proceeding (--amp=auto picks the faster one)", stacklevel=3)


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


def run_precision(amp: str | None, device: torch.device | str, network: torch.nn.Module | None = None,
                  channels_last: bool | None = None) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, NHWC) to run `network` on `device` under --amp: the dtype for the network's size (auto
    keeps small networks in float32 on a CPU), NHWC where it is faster unless `channels_last` decides."""
    dtype = amp_dtype(amp, device, None if network is None else count_parameters(network))
    return dtype, channels_last_default(device, dtype) if channels_last is None else channels_last
