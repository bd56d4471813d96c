"""How close a benchmark comes to what the machine can do: FLOPs counted by torch, ceilings measured here.

A benchmark row's work is counted once with torch's `FlopCounterMode` (`count_flops`), which counts
matrix products, convolutions (and their backward passes) and attention from the operands' shapes, a
multiply-add as two FLOPs and a bias add as none; elementwise ops, normalisation and optimizer steps
count zero. Its ceiling is measured in the same run on the same device and dtype, twice: a large square
matrix product (`matmul_ceiling_tflops`) and the network's own most expensive 3x3 convolution at the
row's batch and memory layout (`conv_ceiling_tflops`). The higher of the two is "the ceiling" of
`roofline_fields`, so that "% of ceiling" is a measurement rather than a data sheet's peak. Ceilings are
cached for the run per device, dtype (and convolution shape).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ops import custom_ops

# Square matrix sizes of the matmul ceiling: about a second of calls on a 2-core CPU (a 4096^3 product
# is 137 GFLOP: 0.45 s in float32, 0.08 s in bf16 on AMX), and large enough to saturate a GPU.
MATMUL_SIZES = {"cpu": 4096, "cuda": 8192}
MIN_SECONDS = 1.0  # each ceiling repeats its call (at least MIN_REPEATS times) for this long and keeps the best
MIN_REPEATS = 3
CHUNK_SECONDS = 0.02  # calls faster than this are timed in groups, so a timing is not mostly launch and sync

_ceiling_cache: dict[tuple, tuple[float, int]] = {}  # key -> (best TFLOP/s, rounds measured)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------
# Counting.


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One 2-D convolution call: the input's and weight's shapes and the conv's arguments."""

    input: tuple[int, ...]
    weight: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def output_size(self) -> tuple[int, int]:
        spatial = zip(self.input[2:], self.weight[2:], self.stride, self.padding, self.dilation, strict=True)
        return tuple((size + 2 * pad - dil * (k - 1) - 1) // step + 1 for size, k, step, pad, dil in spatial)

    def flops(self) -> int:
        """2 * N * Cout * Hout * Wout * (Cin / groups) * kh * kw, as torch counts a convolution."""
        n, (c_out, c_in_per_group, kh, kw) = self.input[0], self.weight
        h_out, w_out = self.output_size()
        return 2 * n * c_out * h_out * w_out * c_in_per_group * kh * kw

    def with_batch(self, batch: int) -> ConvShape:
        return dataclasses.replace(self, input=(batch, *self.input[1:]))

    def __str__(self) -> str:
        n, c, h, w = self.input
        return f"{self.weight[1] * self.groups}->{self.weight[0]} {self.weight[2]}x{self.weight[3]} at {n}x{c}x{h}x{w}"


class _TotalsOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks make autograd.grad of a
    leaf fail (the R1 penalty's gradient at the real x_t): only the total is kept."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None


@contextmanager
def reference_ops() -> Iterator[None]:
    """The custom CUDA kernels, which the counter cannot see into, swapped for their PyTorch reference ops."""
    saved = os.environ.get(custom_ops.REFERENCE_ENV)
    os.environ[custom_ops.REFERENCE_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[custom_ops.REFERENCE_ENV]
        else:
            os.environ[custom_ops.REFERENCE_ENV] = saved


def count_flops(run: Callable[[], object], convs: list[ConvShape] | None = None) -> int:
    """FLOPs of one call of `run` as torch counts them; the nn.Conv2d calls it makes appended to `convs`.

    The custom CUDA kernels run as their reference ops meanwhile, so that a count is the same on every
    device (their FIR resampling is a depthwise convolution, under 1% of a network's count).
    """
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _TotalsOnly()

    def record(module, args, output):
        if isinstance(module, torch.nn.Conv2d) and convs is not None:
            convs.append(ConvShape(tuple(args[0].shape), tuple(module.weight.shape), tuple(module.stride),
                                   tuple(module.padding), tuple(module.dilation), module.groups))

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with reference_ops(), counter:
            run()
    finally:
        hook.remove()
    return counter.get_total_flops()


def typical_conv(convs: Sequence[ConvShape]) -> ConvShape | None:
    """The most expensive dense 3x3 convolution among `convs` (None without one)."""
    dense_3x3 = [c for c in convs if c.weight[2:] == (3, 3) and c.groups == 1 and len(c.input) == 4]
    return max(dense_3x3, key=ConvShape.flops, default=None)


# ---------------------------------------------------------------------------------------------------------
# Ceilings.


def best_tflops(run: Callable[[], object], flops: int, device: torch.device, min_seconds: float | None = None,
                min_repeats: int = MIN_REPEATS) -> float:
    """The best rate of `run` (doing `flops` each call) in TFLOP/s, over timings of at least min_seconds
    (default MIN_SECONDS)."""
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    run()  # allocations, kernel selection, oneDNN primitive creation
    synchronize(device)
    calls, spent, repeats, best = 1, 0.0, 0, 0.0
    while spent < min_seconds or repeats < min_repeats:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        synchronize(device)
        elapsed = time.perf_counter() - start
        spent, repeats = spent + elapsed, repeats + 1
        best = max(best, flops * calls / max(elapsed, 1e-9) / 1e12)
        if elapsed < CHUNK_SECONDS:
            calls *= 2
    return best


def matmul_ceiling_tflops(device: torch.device, dtype: torch.dtype, size: int,
                          min_seconds: float | None = None) -> float:
    """TFLOP/s of a size x size by size x size matrix product in `dtype` (2 * size^3 FLOPs a call)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    with torch.inference_mode():
        return best_tflops(lambda: torch.mm(a, b), 2 * size**3, device, min_seconds)


def conv_ceiling_tflops(shape: ConvShape, device: torch.device, dtype: torch.dtype, channels_last: bool,
                        min_seconds: float | None = None) -> float:
    """TFLOP/s of one forward convolution of `shape` in `dtype` and the given memory layout."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    x, weight = (torch.randn(size, generator=generator).to(device, dtype).contiguous(memory_format=memory_format)
                 for size in (shape.input, shape.weight))
    bias = torch.zeros(shape.weight[0], device=device, dtype=dtype)

    def conv():
        return F.conv2d(x, weight, bias, shape.stride, shape.padding, shape.dilation, shape.groups)

    with torch.inference_mode():
        return best_tflops(conv, shape.flops(), device, min_seconds)


def _math_mode(device: torch.device, dtype: torch.dtype) -> tuple:
    """The settings that change a float32 product's speed on a GPU (TF32), part of a ceiling's cache key."""
    if device.type != "cuda" or dtype != torch.float32:
        return ()
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def ceilings(device: torch.device, dtype: torch.dtype, conv: ConvShape | None, channels_last: bool,
             after_timing: bool = False) -> dict:
    """The matmul and conv ceilings (TFLOP/s) on this device in this dtype: measured once before a row's
    timings and once more after them (`after_timing`), keeping the faster of the two. A shared machine's
    slow phase during a single measurement would make every row look close to its ceiling."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    mode = _math_mode(device, dtype)
    size = MATMUL_SIZES.get(device.type, MATMUL_SIZES["cpu"])
    matmul = _best_measured(("matmul", str(device), dtype, size, mode), after_timing,
                            lambda: matmul_ceiling_tflops(device, dtype, size))
    result = {"ceiling_matmul_tflops": matmul, "ceiling_conv_tflops": None, "ceiling_conv": None}
    if conv is not None:
        value = _best_measured(("conv", str(device), dtype, conv, channels_last, mode), after_timing,
                               lambda: conv_ceiling_tflops(conv, device, dtype, channels_last))
        result.update(ceiling_conv_tflops=value, ceiling_conv=str(conv))
    return result


def _best_measured(key: tuple, after_timing: bool, measure: Callable[[], float]) -> float:
    """The best of a ceiling's measurements this run: one before the timings, one after them."""
    best, rounds = _ceiling_cache.get(key, (0.0, 0))
    wanted = 2 if after_timing else 1  # round 2 is the one after the timings, whether round 1 ran or not
    if rounds < wanted:
        best, rounds = max(best, measure()), wanted
        _ceiling_cache[key] = (best, rounds)
    return best


def roofline_fields(flops_per_item: float, items_per_s: float, measured_ceilings: dict) -> dict:
    """A row's achieved TFLOP/s (flops_per_item * items_per_s), its ceiling (the higher of the matmul and
    conv ceilings, which are kept beside it) and the achieved share of that ceiling in percent."""
    tflops = flops_per_item * items_per_s / 1e12
    ceiling = max(value for value in (measured_ceilings["ceiling_matmul_tflops"],
                                      measured_ceilings["ceiling_conv_tflops"]) if value is not None)
    return {"tflops": tflops, "ceiling_tflops": ceiling, "percent_of_ceiling": 100 * tflops / ceiling,
            **measured_ceilings}
