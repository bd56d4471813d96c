"""Adaptive group normalisation fused with its activation: y = act(GroupNorm(x + bias) * gamma + beta).

gamma, beta and bias hold one value per sample and channel ([N, C]): the AdaGN modulation of the NCSN++
generator's residual blocks, with the time embedding's bias added before it. Two implementations share one
interface: the PyTorch reference (differentiable to any order, four passes over x: bias, GroupNorm,
modulation, SiLU), and a CPU kernel (`ops/cpu_library`) whose forward reads x twice and writes y once and
whose backward reads x and dy twice and writes dx once. Its gradient runs for NHWC x (the CPU's bf16
training layout) and is first order only (the generator is never differentiated twice: R1 differentiates
D); on other devices, in float16 and while torch.compile or torch.export trace, the reference runs. The
kernel rounds once, from float32, where the reference rounds after each of its steps in bfloat16.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ops import cpu_library, custom_ops

IMPLS = ("cpu", "ref")
ACTIVATIONS = ("linear", "silu")
KERNEL_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the C library's dtype codes


def adaptive_group_norm(
    x: torch.Tensor,
    num_groups: int,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    act: str = "linear",
    impl: str = "cpu",
) -> torch.Tensor:
    """act(GroupNorm(x + bias) * gamma + beta) for NCHW x [N, C, H, W] and per-sample gamma, beta, bias [N, C]."""
    _check_args(x, num_groups, gamma, beta, bias, act, impl)
    if _kernel_applies(x, gamma, beta, bias, impl) and custom_ops.self_checked(
            "adaptive_group_norm", x, _self_check_runs, devices=("cpu",)):
        if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, gamma, beta, bias))):
            return _adaptive_group_norm_cpu(x, num_groups, gamma, beta, bias, eps, act)
        # With a gradient, NHWC only: there forward + backward take 1.0 against 3.8 ms (bf16, 8x256x16x16); an
        # NCHW version took 3.0 against PyTorch's 1.4 ms (float32), whose NCHW GroupNorm is the better tuned.
        if custom_ops.is_channels_last(x):
            return AdaptiveGroupNormCpu.apply(x, gamma, beta, bias, num_groups, eps, act)
    return _adaptive_group_norm_ref(x, num_groups, gamma, beta, bias, eps, act)


def _check_args(x, num_groups: int, gamma, beta, bias, act: str, impl: str) -> None:
    """Raise ValueError naming the argument that does not fit."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be NCHW [N, C, H, W], got shape {tuple(x.shape)}")
    if num_groups < 1 or x.shape[1] % num_groups:
        raise ValueError(f"num_groups must divide the {x.shape[1]} channels of x, got {num_groups}")
    for name, value in (("gamma", gamma), ("beta", beta), ("bias", bias)):
        if value is not None and tuple(value.shape) != tuple(x.shape[:2]):
            raise ValueError(f"{name} must have one value per sample and channel, shape {list(x.shape[:2])}, "
                             f"got {list(value.shape)}")


def _adaptive_group_norm_ref(x, num_groups: int, gamma, beta, bias, eps: float, act: str) -> torch.Tensor:
    """Reference from differentiable PyTorch ops."""
    if bias is not None:
        x = x + bias[:, :, None, None]
    y = torch.addcmul(beta[:, :, None, None], gamma[:, :, None, None], F.group_norm(x, num_groups, eps=eps))
    return F.silu(y) if act == "silu" else y


# ---------------------------------------------------------------------------------------------------------
# CPU kernel.


def _kernel_applies(x: torch.Tensor, gamma, beta, bias, impl: str) -> bool:
    """Whether the CPU kernel may compute this call (it still falls back if its library does not build).

    Nothing here depends on the batch size: a sample gets the same arithmetic in any batch.
    """
    tensors = [t for t in (x, gamma, beta, bias) if t is not None]
    return (impl == "cpu" and x.device.type == "cpu" and x.dtype in KERNEL_DTYPES
            and all(type(t) is torch.Tensor and t.device == x.device and t.dtype == x.dtype for t in tensors)
            and (x.is_contiguous() or custom_ops.is_channels_last(x))
            and not custom_ops.reference_forced() and not torch.compiler.is_compiling()
            and cpu_library.get_library() is not None)


def _adaptive_group_norm_cpu(x, num_groups: int, gamma, beta, bias, eps: float, act: str,
                             statistics: bool = False):
    """Run the kernel on contiguous NCHW or NHWC x; the output keeps x's layout. With `statistics`, also
    return each sample's group means and reciprocal standard deviations [N, num_groups] for the backward."""
    batch, channels, height, width = x.shape
    out = torch.empty_like(x, memory_format=_layout(x))
    gamma, beta, bias = _as_float32(gamma, beta, bias)
    mean = x.new_empty([batch, num_groups], dtype=torch.float32) if statistics else None
    rstd = torch.empty_like(mean) if statistics else None
    status = cpu_library.get_library().ddgan_adaptive_group_norm(
        x.data_ptr(), out.data_ptr(), KERNEL_DTYPES[x.dtype], int(custom_ops.is_channels_last(x)), _pointer(gamma),
        _pointer(beta), _pointer(bias), batch, channels, height * width, num_groups, float(eps),
        ACTIVATIONS.index(act), torch.get_num_threads(), _pointer(mean), _pointer(rstd))
    _check_status(status, "adaptive_group_norm", x)
    return (out, mean, rstd) if statistics else out


class AdaptiveGroupNormCpu(torch.autograd.Function):
    """The CPU kernel with its gradient, for NHWC x (first order: a second derivative raises)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, bias, num_groups: int, eps: float, act: str):
        if not custom_ops.is_channels_last(x):
            raise ValueError("the CPU kernel's gradient needs NHWC x (channels_last); NCHW takes the reference")
        # The float32 copies the kernel reads, made once for both passes (those of float32 inputs are the inputs).
        vectors = _as_float32(gamma, beta, bias)
        out, mean, rstd = _adaptive_group_norm_cpu(x, num_groups, *vectors, eps, act, statistics=True)
        ctx.save_for_backward(x, *vectors, mean, rstd)
        ctx.num_groups, ctx.act, ctx.vector_dtype = num_groups, act, gamma.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, gamma, beta, bias, mean, rstd = ctx.saved_tensors
        batch, channels, height, width = x.shape
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        dgamma, dbeta = (x.new_empty([batch, channels], dtype=torch.float32) for _ in range(2))
        dbias = torch.empty_like(dgamma) if bias is not None else None
        status = cpu_library.get_library().ddgan_adaptive_group_norm_backward(
            x.data_ptr(), dy.data_ptr(), dx.data_ptr(), KERNEL_DTYPES[x.dtype], 1, _pointer(gamma), _pointer(beta),
            _pointer(bias), _pointer(mean), _pointer(rstd), _pointer(dgamma), _pointer(dbeta), _pointer(dbias), batch,
            channels, height * width, ctx.num_groups, ACTIVATIONS.index(ctx.act), torch.get_num_threads())
        _check_status(status, "adaptive_group_norm's backward", x)
        dtype = ctx.vector_dtype  # gamma, beta and bias share x's dtype (_kernel_applies)
        return (dx, dgamma.to(dtype), dbeta.to(dtype), dbias.to(dtype) if dbias is not None else None,
                None, None, None)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """x's memory format, as the kernel reads it."""
    return torch.channels_last if custom_ops.is_channels_last(x) else torch.contiguous_format


def _as_float32(*tensors):
    """Contiguous float32 copies of the per-sample vectors (small: they spare the kernel a dtype per argument)."""
    return [t.detach().float().contiguous() if t is not None else None for t in tensors]


def _pointer(t: torch.Tensor | None) -> int | None:
    """t's data address for ctypes, None for None."""
    return t.data_ptr() if t is not None else None


def _check_status(status: int, name: str, x: torch.Tensor) -> None:
    """Raise if the kernel reported a failure."""
    if status != 0:
        reason = "out of memory" if status == 2 else "bad argument"
        raise RuntimeError(f"ddgan_cpu: {name} failed with status {status} ({reason}) on x of shape {list(x.shape)}")


def _self_check_runs(like: torch.Tensor) -> custom_ops.CheckRuns:
    """The kernel's and the reference's outputs and gradients on a small input of like's dtype and layout."""
    generator = torch.Generator().manual_seed(0)  # its own stream: the caller's random numbers stay as they were
    x, dy = (torch.randn([2, 8, 5, 5], generator=generator) for _ in range(2))
    gamma, beta, bias = (torch.randn([2, 8], generator=generator) for _ in range(3))
    memory_format = _layout(like)
    x, dy = (t.to(like.dtype).contiguous(memory_format=memory_format) for t in (x, dy))
    gamma, beta, bias = (t.to(like.dtype) for t in (gamma, beta, bias))

    def run(kernel: bool) -> list[torch.Tensor]:
        results = []
        for act in ACTIVATIONS:
            if memory_format != torch.channels_last:  # no gradient kernel in NCHW: the forward only
                with torch.no_grad():
                    function = _adaptive_group_norm_cpu if kernel else _adaptive_group_norm_ref
                    results.append(function(x, 4, gamma, beta, bias, 1e-6, act))
                continue
            inputs = [t.detach().requires_grad_() for t in (x, gamma, beta, bias)]
            if kernel:
                y = AdaptiveGroupNormCpu.apply(*inputs, 4, 1e-6, act)
            else:
                y = _adaptive_group_norm_ref(inputs[0], 4, *inputs[1:], 1e-6, act)
            results += [y, *torch.autograd.grad((y * dy).sum(), inputs)]
        return results

    return functools.partial(run, True), functools.partial(run, False)
