"""Time the custom ops (upsample2d, downsample2d, bias_act) forward + backward at the networks' shapes.

On CUDA every op runs twice, through the PyTorch reference and through the compiled kernel, and the row
reports the kernel's speed-up. On the CPU only the reference exists, at smaller shapes so that the whole
run stays under a minute on two cores. Each row also carries `flops_per_call`: the FLOPs of one forward
+ backward call of the reference, as torch counts them (eval.roofline.count_flops; the FIR filter is a
depthwise convolution, bias_act's elementwise work counts zero).

    ddgan bench --what=ops --device=cuda      (or: python -m eval.bench_ops --device=cuda)
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from eval import roofline
from ops import custom_ops
from ops.bias_act import bias_act
from ops.upfirdn2d import downsample2d, setup_filter, upsample2d

# NCHW activations of the CIFAR-10 generator (batch 64) and of the 256 px networks (batch 8).
CUDA_SHAPES = [(64, 256, 32, 32), (64, 256, 16, 16), (64, 256, 8, 8), (8, 128, 256, 256), (8, 256, 64, 64)]
CPU_SHAPES = [(8, 64, 32, 32), (8, 64, 16, 16), (8, 64, 8, 8), (1, 32, 128, 128)]
RESAMPLE_TAPS = [1, 3, 3, 1]


def _ops(device: torch.device) -> dict[str, Callable[[torch.Tensor, str], torch.Tensor]]:
    """The benchmarked ops, each taking (x, impl)."""
    f = setup_filter(RESAMPLE_TAPS, device=device)
    biases: dict[int, torch.Tensor] = {}

    def lrelu(x: torch.Tensor, impl: str) -> torch.Tensor:
        """bias_act with a per-channel bias and the discriminators' leaky ReLU."""
        b = biases.setdefault(x.shape[1], torch.randn(x.shape[1], device=device, requires_grad=True))
        return bias_act(x, b, act="lrelu", impl=impl)

    return {
        "upsample2d": lambda x, impl: upsample2d(x, f, impl=impl),
        "downsample2d": lambda x, impl: downsample2d(x, f, impl=impl),
        "bias_act_lrelu": lrelu,
    }


def sum_backward(op: Callable[[torch.Tensor, str], torch.Tensor], x: torch.Tensor, impl: str) -> None:
    """op(x) and the backward pass of its sum."""
    op(x, impl).sum().backward()


def time_forward_backward(
    op: Callable[[torch.Tensor, str], torch.Tensor],
    x: torch.Tensor,
    impl: str,
    repeats: int,
    warmup: int,
) -> float:
    """Median wall time in milliseconds of op(x) followed by its backward pass."""
    dy = torch.randn_like(op(x, impl))
    times = []
    for i in range(warmup + repeats):
        roofline.synchronize(x.device)
        start = time.perf_counter()
        op(x, impl).backward(dy)
        roofline.synchronize(x.device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_ops(
    device: str | torch.device = "cpu",
    repeats: int = 5,
    warmup: int = 2,
    shapes: Sequence[tuple[int, int, int, int]] | None = None,
) -> list[dict]:
    """Forward + backward timings of every op at every shape: one dict per (op, shape)."""
    device = torch.device(device)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if shapes is None:
        shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    kernel = device.type == "cuda" and not custom_ops.reference_forced() and custom_ops.get_plugin() is not None
    rows = []
    for name, op in _ops(device).items():
        for shape in shapes:
            x = torch.randn(shape, device=device, requires_grad=True)
            row = {"op": name, "shape": list(shape), "device": str(device), "repeats": repeats}
            row["ref_ms"] = time_forward_backward(op, x, "ref", repeats, warmup)
            row["flops_per_call"] = roofline.count_flops(functools.partial(sum_backward, op, x, "ref"))
            if kernel:
                row["cuda_ms"] = time_forward_backward(op, x, "cuda", repeats, warmup)
                row["speedup"] = row["ref_ms"] / row["cuda_ms"]
            rows.append(row)
            del x
    return rows
