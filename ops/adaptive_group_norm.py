"""Adaptive group normalisation fused with its activation: y = act(GroupNorm(x + bias) * gamma + beta).

gamma, beta and bias hold one value per sample and channel ([N, C]): the AdaGN modulation of the NCSN++
generator's residual blocks, with the time embedding's bias added before it. Two implementations share one
interface: the PyTorch reference (differentiable, four passes over x: bias, GroupNorm, modulation, SiLU),
and a CPU kernel (`ops/cpu_library`) that reads x twice and writes y once, for inference only: where a
gradient is wanted, on other devices, in float16 or while torch.compile or torch.export trace, the reference
runs. The kernel rounds once, from float32, where the reference rounds after each of its steps in bfloat16.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

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
        return _adaptive_group_norm_cpu(x, num_groups, gamma, beta, bias, eps, act)
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
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and not custom_ops.reference_forced() and not torch.compiler.is_compiling()
            and cpu_library.get_library() is not None)


def _adaptive_group_norm_cpu(x, num_groups: int, gamma, beta, bias, eps: float, act: str) -> torch.Tensor:
    """Run the kernel on contiguous NCHW or NHWC x; the output keeps x's layout."""
    batch, channels, height, width = x.shape
    channels_last = custom_ops.is_channels_last(x)
    out = torch.empty_like(x, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # The per-sample vectors are small: float32 copies cost nothing and spare the kernel a dtype per argument.
    gamma, beta = gamma.float().contiguous(), beta.float().contiguous()
    bias = bias.float().contiguous() if bias is not None else None
    status = cpu_library.get_library().ddgan_adaptive_group_norm(
        x.data_ptr(), out.data_ptr(), KERNEL_DTYPES[x.dtype], int(channels_last), gamma.data_ptr(),
        beta.data_ptr(), bias.data_ptr() if bias is not None else None, batch, channels, height * width,
        num_groups, float(eps), ACTIVATIONS.index(act), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"ddgan_cpu: adaptive_group_norm failed with status {status} "
                           f"({'out of memory' if status == 2 else 'bad argument'}) on x of shape {list(x.shape)}")
    return out


def _self_check_runs(like: torch.Tensor) -> custom_ops.CheckRuns:
    """The kernel's and the reference's outputs on a small input of like's dtype and layout, each activation."""
    generator = torch.Generator().manual_seed(0)  # its own stream: the caller's random numbers stay as they were
    x, gamma, beta, bias = (torch.randn(shape, generator=generator)
                            for shape in ([2, 8, 5, 5], [2, 8], [2, 8], [2, 8]))
    memory_format = torch.channels_last if custom_ops.is_channels_last(like) else torch.contiguous_format
    x = x.to(like.dtype).contiguous(memory_format=memory_format)
    gamma, beta, bias = (t.to(like.dtype) for t in (gamma, beta, bias))

    def run(function) -> list[torch.Tensor]:
        with torch.no_grad():
            return [function(x, 4, gamma, beta, bias, 1e-6, act) for act in ACTIVATIONS]

    return (functools.partial(run, _adaptive_group_norm_cpu), functools.partial(run, _adaptive_group_norm_ref))
