"""CUDA kernels against the PyTorch reference: forward, backward and double backward (needs a GPU)."""

import functools

import pytest
import torch

from ops import custom_ops
from ops.bias_act import ACTIVATIONS, bias_act
from ops.upfirdn2d import downsample2d, setup_filter, upfirdn2d, upsample2d
from tests.helpers import value_and_two_derivatives


def _plugin_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if custom_ops.reference_forced():
        pytest.skip(f"{custom_ops.REFERENCE_ENV} forces the reference path")
    if custom_ops.get_plugin() is None:
        # Compile errors fail tests/test_ops_build.py; here a missing toolkit is not the kernels' fault.
        pytest.skip("the ddgan_ops extension did not build on this host (see the RuntimeWarning)")


@pytest.fixture(autouse=True)
def _cuda():
    _plugin_or_skip()
    torch.manual_seed(0)
    # cuDNN may run the reference's float32 convolutions in TF32 (10-bit mantissa), which alone would miss the
    # 1e-5 tolerance: compare against true float32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# Looser tolerances for half types: the reference rounds every intermediate, the kernel only the output.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}
DTYPES = list(TOLERANCE)


def _close(got, expected, dtype, scale=1.0):
    tol = TOLERANCE[dtype] * scale
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


def _input(shape, dtype, channels_last):
    x = torch.randn(shape, device="cuda").to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_()


def _forward_backward_double(fn, inputs, dtype):
    """Output, first gradients and second-order gradients of fn, for comparing two implementations."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*inputs)
    dy = torch.randn_like(y).requires_grad_()
    grads = torch.autograd.grad(y, inputs, dy, create_graph=True)
    weights = [torch.randn_like(g) for g in grads]
    penalty = sum((g.float() * w.float()).sum() for g, w in zip(grads, weights, strict=True))
    second = torch.autograd.grad(penalty, inputs + [dy], allow_unused=True)
    second = [s if s is not None else torch.zeros_like(t) for s, t in zip(second, inputs + [dy], strict=True)]
    return [y, *grads, *second], dy


# ---------------------------------------------------------------------------------------------------------
# upfirdn2d.

UPFIRDN_CASES = [
    # up, down, padding, filter taps
    (2, 1, (2, 1, 2, 1), [1, 3, 3, 1]),
    (1, 2, (1, 1, 1, 1), [1, 3, 3, 1]),
    (1, 1, (2, 1, 1, 2), [[1, 2, 0.5], [0, -1, 3]]),
    (4, 1, (0, 3, -1, 2), [1, 2, 5, -1, 0.5]),
    (1, 4, (3, 0, 1, 1), [1, 2, 5, -1]),
    ((2, 1), (1, 2), (1, -1, 2, 0), [1, 2, 3, 4, 3, 2, 1, 0.5, 2]),  # long: two separable passes
    (2, 2, (-1, 2, 1, 0), [[1, -2], [3, 0.5], [4, 2]]),
]


@pytest.mark.parametrize("up,down,padding,taps", UPFIRDN_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("flip", [False, True])
def test_upfirdn2d_matches_reference(up, down, padding, taps, dtype, channels_last, flip):
    x = _input([3, 5, 13, 11], dtype, channels_last)
    f = torch.tensor(taps, dtype=torch.float32, device="cuda")
    outputs = {}
    for impl in ("ref", "cuda"):
        fn = functools.partial(upfirdn2d, f=f, up=up, down=down, padding=padding, flip_filter=flip, gain=1.7,
                               impl=impl)
        torch.manual_seed(1)
        outputs[impl], _ = _forward_backward_double(fn, [x], dtype)
    for got, expected in zip(outputs["cuda"], outputs["ref"], strict=True):
        assert got.shape == expected.shape
        _close(got, expected, dtype, scale=expected.abs().max().item() + 1)
    if channels_last:
        assert outputs["cuda"][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("fn", [upsample2d, downsample2d])
def test_resampling_wrappers(fn):
    x = torch.randn(4, 8, 16, 16, device="cuda")
    f = setup_filter([1, 3, 3, 1], device="cuda")
    _close(fn(x, f, impl="cuda"), fn(x, f, impl="ref"), torch.float32)


def test_upfirdn2d_gradcheck_float64():
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    f = setup_filter([1, 3, 3, 1], device="cuda").double()
    for up, down in [(2, 1), (1, 2)]:
        fn = lambda x, up=up, down=down: upfirdn2d(x, f, up=up, down=down, padding=(2, 1, 1, 2))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_dispatch_uses_the_kernel():
    x = torch.randn(1, 1, 4, 4, device="cuda", requires_grad=True)
    y = upsample2d(x, setup_filter([1, 3, 3, 1], device="cuda"))
    assert "Upfirdn2dCuda" in type(y.grad_fn).__name__
    y = bias_act(x, act="lrelu")
    assert "BiasActCuda" in type(y.grad_fn).__name__


# ---------------------------------------------------------------------------------------------------------
# bias_act.


def _clear_of_edges(act, shape, dim, b, clamp, dtype, channels_last, alpha=0.15, gain=1.3):
    """x whose z = x + b keeps off the activations' kinks at 0 and whose y keeps off the clamp bounds.

    There the two paths may rightly disagree: the reference rounds z and y to the storage type, the
    kernel computes both in float, and one ulp decides which side of a kink or a bound a sample is on.
    """
    bias = b.detach().double().reshape([-1 if i == dim else 1 for i in range(len(shape))])
    z = torch.randn(shape, device="cuda", dtype=torch.float64)
    for _ in range(100):
        y = ACTIVATIONS[act].func(z, alpha) * gain
        near_edge = z.abs() < 0.05
        if clamp is not None:
            near_edge |= (y.abs() - clamp).abs() < 0.06
        if not near_edge.any():
            break
        z = torch.where(near_edge, torch.randn_like(z), z)
    x = (z - bias).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_()


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim,clamp", [(1, None), (2, 0.7), (3, None)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bias_act_matches_reference(act, dtype, dim, clamp, channels_last):
    shape = [4, 6, 5, 7]
    b = torch.randn(shape[dim], device="cuda", dtype=dtype, requires_grad=True)
    x = _clear_of_edges(act, shape, dim, b, clamp, dtype, channels_last)
    outputs = {}
    for impl in ("ref", "cuda"):
        fn = functools.partial(bias_act, dim=dim, act=act, alpha=0.15, gain=1.3, clamp=clamp, impl=impl)
        torch.manual_seed(1)
        outputs[impl], _ = _forward_backward_double(fn, [x, b], dtype)
    for got, expected in zip(outputs["cuda"], outputs["ref"], strict=True):
        # Bias gradients sum many terms, so they carry proportionally more rounding.
        _close(got, expected, dtype, scale=expected.abs().max().item() + 1)
    if channels_last:
        assert outputs["cuda"][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("act,x,clamp", [("elu", 0.0, None), ("selu", 0.0, None), ("linear", -0.7, 0.7 * 1.3),
                                          ("linear", 0.5, 0.5 * 1.3), ("lrelu", 0.0, None), ("relu", 0.0, None)])
def test_bias_act_edges_follow_torch(dtype, act, x, clamp):
    """At a kink (z = 0) or on a clamp bound the kernel takes the same side as torch's autograd."""
    xs = torch.tensor([x, x], device="cuda", dtype=dtype)
    results = {impl: value_and_two_derivatives(functools.partial(
        bias_act, dim=0, act=act, alpha=0.2, gain=1.3, clamp=clamp, impl=impl), xs) for impl in ("ref", "cuda")}
    for got, want in zip(results["cuda"], results["ref"], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bias_act_clamp_keeps_nan():
    x = torch.tensor([float("nan"), 5.0, -5.0], device="cuda")
    y = bias_act(x, dim=0, act="linear", gain=1.0, clamp=2.0)
    assert torch.isnan(y[0]) and y[1:].tolist() == [2.0, -2.0]


def test_bias_act_without_bias_and_2d_input():
    x = torch.randn(32, 17, device="cuda")
    for act in ("linear", "lrelu", "silu"):
        _close(bias_act(x, act=act, gain=0.5), bias_act(x, act=act, gain=0.5, impl="ref"), torch.float32)
        b = torch.randn(17, device="cuda")
        _close(bias_act(x, b, dim=1, act=act), bias_act(x, b, dim=1, act=act, impl="ref"), torch.float32)


@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("tanh", 0.8), ("silu", None), ("linear", None)])
def test_bias_act_gradcheck_float64(act, clamp):
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        x += 0.05 * torch.sign(x)
    x.requires_grad_()
    b = torch.randn(3, dtype=torch.float64, device="cuda", requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act=act, gain=1.3, clamp=clamp)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_r1_penalty_through_both_ops():
    """The discriminator pattern: grad of D(x) w.r.t. x with create_graph, then the penalty's backward."""
    f = setup_filter([1, 3, 3, 1], device="cuda")
    weight = torch.randn(8, 8, 3, 3, device="cuda", requires_grad=True)
    x0 = torch.randn(2, 8, 16, 16, device="cuda")
    results = {}
    for impl in ("ref", "cuda"):
        x = x0.clone().requires_grad_()
        h = torch.nn.functional.conv2d(x, weight, padding=1)
        h = bias_act(h, act="lrelu", impl=impl)
        h = downsample2d(h, f, impl=impl)
        h = bias_act(upsample2d(h, f, impl=impl), act="silu", impl=impl)
        (grad_x,) = torch.autograd.grad(h.sum(), x, create_graph=True)
        penalty = grad_x.square().sum()
        (grad_w,) = torch.autograd.grad(penalty, weight)
        results[impl] = (penalty, grad_w)
    for got, expected in zip(results["cuda"], results["ref"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
