"""Reference upfirdn2d against scipy.signal (an independent implementation), plus gradients and errors."""


import numpy as np
import pytest
import scipy.signal
import torch

from ops import custom_ops
from ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d
from tests.helpers import emulated_upfirdn2d_kernel as _emulated_kernel

# Asymmetric taps, so that a flipped filter gives a different answer.
TAPS_1D = [np.array([1.0, 2.0, 5.0, -1.0]), np.array([0.5, -2.0, 3.0]), np.arange(1.0, 10.0)]
TAPS_2D = np.array([[1.0, -2.0], [3.0, 0.5], [4.0, 2.0]])  # rank 2, so not separable
PADDINGS = [(0, 0, 0, 0), (1, 2, 3, 0), (-1, 2, 0, -2), (3, -2, -1, 1)]
SCALINGS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4), ((2, 1), (1, 2))]


pytestmark = pytest.mark.usefixtures("seeded_single_thread")


def _take(z: np.ndarray, axis: int, count: int, step: int, start: int) -> np.ndarray:
    """Samples start, start+step, ... of z along axis, reading zeros outside z."""
    index = start + step * np.arange(count)
    valid = (index >= 0) & (index < z.shape[axis])
    picked = np.take(z, np.where(valid, index, 0), axis=axis)
    shape = [1] * z.ndim
    shape[axis] = count
    return picked * valid.reshape(shape)


def _crop_full(z, size, up, down, pad0, pad1, taps, axis):
    """Turn a full convolution of the zero-inserted input into upfirdn2d's valid, padded, strided output."""
    count = (size * up + pad0 + pad1 - taps) // down + 1
    return _take(z, axis, count, down, taps - 1 - pad0)


def _expected_separable(x, taps, up, down, padding, flip, gain):
    """scipy.signal.upfirdn along W then H."""
    (upx, upy), (downx, downy) = up, down
    px0, px1, py0, py1 = padding
    h = taps[::-1] if flip else taps
    z = scipy.signal.upfirdn(h, x, up=upx, axis=3)
    z = _crop_full(z, x.shape[3], upx, downx, px0, px1, len(h), axis=3)
    z = scipy.signal.upfirdn(h, z, up=upy, axis=2)
    z = _crop_full(z, x.shape[2], upy, downy, py0, py1, len(h), axis=2)
    return z * gain


def _expected_2d(x, taps, up, down, padding, flip, gain):
    """Zero insertion by scipy.signal.upfirdn with a unit filter, then scipy.signal.convolve2d."""
    (upx, upy), (downx, downy) = up, down
    px0, px1, py0, py1 = padding
    h = taps[::-1, ::-1] if flip else taps
    u = scipy.signal.upfirdn([1.0], scipy.signal.upfirdn([1.0], x, up=upx, axis=3), up=upy, axis=2)
    z = np.zeros(u.shape[:2] + (u.shape[2] + h.shape[0] - 1, u.shape[3] + h.shape[1] - 1))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            z[n, c] = scipy.signal.convolve2d(u[n, c], h, mode="full")
    z = _crop_full(z, x.shape[3], upx, downx, px0, px1, h.shape[1], axis=3)
    z = _crop_full(z, x.shape[2], upy, downy, py0, py1, h.shape[0], axis=2)
    return z * gain


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _run(x, f, up, down, padding, flip, gain):
    return upfirdn2d(
        torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(f)), up=up, down=down,
        padding=padding, flip_filter=flip, gain=gain, impl="ref",
    ).numpy()


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((2, 2, 11, 13))


@pytest.mark.parametrize("up,down", SCALINGS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("taps", TAPS_1D, ids=["4tap", "3tap", "9tap"])
@pytest.mark.parametrize("flip", [False, True])
def test_separable_matches_scipy(x, taps, up, down, padding, flip):
    expected = _expected_separable(x, taps, _pair(up), _pair(down), padding, flip, gain=1.5)
    got = _run(x, taps, up, down, padding, flip, gain=1.5)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("up,down", SCALINGS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("flip", [False, True])
def test_2d_separable_filter_matches_scipy(x, up, down, padding, flip):
    taps = TAPS_1D[0]
    expected = _expected_separable(x, taps, _pair(up), _pair(down), padding, flip, gain=0.5)
    got = _run(x, np.outer(taps, taps), up, down, padding, flip, gain=0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("up,down", SCALINGS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("flip", [False, True])
def test_non_separable_2d_matches_scipy(x, up, down, padding, flip):
    expected = _expected_2d(x, TAPS_2D, _pair(up), _pair(down), padding, flip, gain=2.0)
    got = _run(x, TAPS_2D, up, down, padding, flip, gain=2.0)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_flip_matters(x):
    a = _run(x, TAPS_2D, 2, 1, 1, False, 1.0)
    b = _run(x, TAPS_2D, 2, 1, 1, True, 1.0)
    assert np.abs(a - b).max() > 0.1


def test_identity_filter_pads_and_decimates(x):
    y = upfirdn2d(torch.from_numpy(x), None, down=2, padding=(1, 0, 0, -1), impl="ref").numpy()
    padded = np.pad(x, [(0, 0), (0, 0), (0, 0), (1, 0)])[:, :, :-1]
    np.testing.assert_array_equal(y, padded[:, :, ::2, ::2])


# ---------------------------------------------------------------------------------------------------------
# Filters and the resampling wrappers.


def test_setup_filter():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4,) and f.dtype == torch.float32
    torch.testing.assert_close(f, torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8)
    f2 = setup_filter([1, 3, 3, 1], separable=False, gain=4)
    assert f2.shape == (4, 4)
    torch.testing.assert_close(f2.sum(), torch.tensor(4.0))
    torch.testing.assert_close(setup_filter([1, 2], flip_filter=True), torch.tensor([2.0, 1.0]) / 3)
    torch.testing.assert_close(setup_filter([1, 2], gain=4, normalize=False), torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match="f must"):
        setup_filter(np.ones((2, 2, 2)))


@pytest.mark.parametrize("taps", [[1], [1, 1], [1, 2, 1], [1, 3, 3, 1], [1, 4, 6, 4, 1]])
@pytest.mark.parametrize("factor", [2, 4])
def test_resampling_sizes(taps, factor):
    f = setup_filter(taps)
    x = torch.randn([1, 2, 8, 12])
    assert upsample2d(x, f, up=factor, impl="ref").shape == (1, 2, 8 * factor, 12 * factor)
    assert downsample2d(x, f, down=factor, impl="ref").shape == (1, 2, 8 // factor, 12 // factor)
    assert filter2d(x, f, impl="ref").shape == x.shape
    assert upsample2d(x, f, up=(2, 1), impl="ref").shape == (1, 2, 8, 24)


# Filters whose polyphase components all sum alike, so a constant stays constant away from the borders.
@pytest.mark.parametrize(
    "taps,factor", [([1, 1], 2), ([1, 2, 1], 2), ([1, 3, 3, 1], 2), ([1, 4, 6, 4, 1], 2), ([1, 1, 1, 1], 4)]
)
def test_resampling_preserves_mean(taps, factor):
    f = setup_filter(taps)
    x = torch.full([1, 2, 8, 12], 3.0)
    m = len(taps)  # borders see the zero padding
    for y in (upsample2d(x, f, up=factor, impl="ref"), filter2d(x, f, impl="ref")):
        torch.testing.assert_close(y[..., m:-m, m:-m], torch.full_like(y[..., m:-m, m:-m], 3.0))
    y = downsample2d(x, f, down=factor, impl="ref")
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 3.0))


def test_upsample_then_downsample_is_smooth_identity():
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1])
    y = downsample2d(upsample2d(x, f, impl="ref"), f, impl="ref")
    assert y.shape == x.shape
    # Same grid after the round trip: no half-pixel shift, so the result correlates strongly with x.
    corr = torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]
    assert corr > 0.8


# The upfirdn2d arguments (up, down, padding, gain) that each wrapper passes for the filter [1, 3, 3, 1].
WRAPPERS_FOR_4_TAPS = [
    (upsample2d, (2, 2), (1, 1), (2, 1, 2, 1), 4.0),
    (downsample2d, (1, 1), (2, 2), (1, 1, 1, 1), 1.0),
    (filter2d, (1, 1), (1, 1), (2, 1, 2, 1), 1.0),
]


@pytest.mark.parametrize("fn,up,down,padding,gain", WRAPPERS_FOR_4_TAPS, ids=["up", "down", "filter"])
def test_wrappers_match_scipy_in_either_layout(fn, up, down, padding, gain):
    x = np.random.default_rng(1).standard_normal((2, 4, 9, 6))
    taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8
    expected = _expected_separable(x, taps, up, down, padding, False, gain)
    f = setup_filter([1, 3, 3, 1])
    for layout in (torch.contiguous_format, torch.channels_last):
        got = fn(torch.from_numpy(x).to(memory_format=layout), f, impl="ref")
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_low_precision_upsampling_on_the_cpu_runs_in_float32_and_rounds_once(monkeypatch, dtype, layout):
    """The CPU's bf16/fp16 grouped transposed convolution loops over channels: it must not be called."""
    seen = []
    transposed = torch.nn.functional.conv_transpose2d
    monkeypatch.setattr(torch.nn.functional, "conv_transpose2d",
                        lambda x, *args, **kwargs: seen.append(x.dtype) or transposed(x, *args, **kwargs))
    x32 = torch.randn(2, 8, 5, 6).to(memory_format=layout)
    x = x32.to(dtype).requires_grad_(True)
    f = setup_filter([1, 3, 3, 1])
    y = upsample2d(x, f, impl="ref")
    assert y.dtype == dtype
    assert torch.equal(y, upsample2d(x.detach().float(), f, impl="ref").to(dtype))
    y.square().sum().backward()
    assert x.grad.dtype == dtype and x.grad.abs().sum() > 0
    assert seen and set(seen) == {torch.float32}

    seen.clear()  # autocast would cast a float32 input down again
    with torch.autocast("cpu", dtype):
        y = upsample2d(x32, f, impl="ref")
    assert y.dtype == dtype and torch.equal(y, upsample2d(x32, f, impl="ref").to(dtype))
    assert seen and set(seen) == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_downsampling_on_the_cpu_backpropagates_in_float32(monkeypatch, dtype):
    """The CPU's bf16/fp16 grouped-convolution backward is slow: a gradient goes through float32; a plain
    forward stays in the low precision, and both give the same values."""
    seen = []
    conv = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d",
                        lambda x, *args, **kwargs: seen.append(x.dtype) or conv(x, *args, **kwargs))
    x = torch.randn(2, 8, 10, 12).to(dtype)
    f = setup_filter([1, 3, 3, 1])
    plain = downsample2d(x, f, impl="ref")
    assert plain.dtype == dtype and set(seen) == {dtype}
    seen.clear()
    x.requires_grad_(True)
    y = downsample2d(x, f, impl="ref")
    assert y.dtype == dtype and set(seen) == {torch.float32} and torch.equal(y, plain)
    (grad,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)  # R1's double backward too
    assert grad.dtype == dtype and grad.float().square().sum().requires_grad
    with torch.autocast("cpu", dtype):  # autocast would cast a float32 input down again
        seen.clear()
        y = downsample2d(x.detach().float().requires_grad_(True), f, impl="ref")
    assert y.dtype == dtype and set(seen) == {torch.float32}


# ---------------------------------------------------------------------------------------------------------
# Gradients.


GRAD_CASES = [(2, 1, (2, 1, 1, 2)), (1, 2, (1, 1, 0, 2)), (2, 2, (-1, 2, 1, 0))]


@pytest.mark.parametrize("up,down,padding", GRAD_CASES)
@pytest.mark.parametrize("taps", [TAPS_1D[1], TAPS_2D], ids=["1d", "2d"])
def test_gradcheck(up, down, padding, taps):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    f = torch.from_numpy(taps)
    fn = lambda x: upfirdn2d(x, f, up=up, down=down, padding=padding, gain=1.3, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_cpu_tensors_take_the_reference_path_even_with_impl_cuda(monkeypatch):
    """The kernel reads device memory only, so CPU tensors must never reach it, even when it is available."""
    calls = []

    class SpyPlugin:  # records its calls and returns zeros, so being used shows in both
        @staticmethod
        def upfirdn2d(x, f, upx, upy, downx, downy, *args):
            calls.append((upx, downx))
            return torch.zeros(*x.shape[:2], x.shape[2] * upy // downy, x.shape[3] * upx // downx, dtype=x.dtype)

    monkeypatch.setattr(custom_ops, "get_plugin", lambda: SpyPlugin)
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6))
    f = setup_filter([1, 3, 3, 1])
    taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8
    assert not custom_ops.use_plugin(torch.from_numpy(x), "cuda")
    for fn, up, down, padding, gain in WRAPPERS_FOR_4_TAPS:
        expected = _expected_separable(x, taps, up, down, padding, False, gain)
        for impl in ({}, {"impl": "cuda"}):  # the default is "cuda"
            np.testing.assert_allclose(fn(torch.from_numpy(x), f, **impl).numpy(), expected, rtol=1e-10, atol=1e-10)
    assert calls == []
    # The spy does see a call when the dispatch picks the kernel, so the empty list above means something.
    monkeypatch.setattr(custom_ops, "use_plugin", lambda x, impl: True)
    assert upsample2d(torch.from_numpy(x), f).abs().max() == 0 and calls == [(2, 1)]


def test_kernel_is_only_given_what_int32_indices_reach():
    from ops.upfirdn2d import _kernel_can_index

    assert _kernel_can_index((64, 128, 128, 128), 256, 256)  # 2^27 elements in, 2^29 out
    assert not _kernel_can_index((64, 128, 256, 256), 512, 512)  # the 2^31-element output of upsample2d
    assert not _kernel_can_index((1, 1, 2**16, 2**15), 2**15, 2**15)  # the input alone is 2^31
    assert _kernel_can_index((64, 128, 256, 256), 128, 128)  # downsampling a 2^29-element input


def test_compiled_graphs_trace_the_reference_ops(monkeypatch):
    class CudaTensorStandIn:
        is_cuda = True

        def numel(self):
            return 1024

    monkeypatch.delenv(custom_ops.REFERENCE_ENV, raising=False)
    assert custom_ops.use_plugin(CudaTensorStandIn(), "cuda")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not custom_ops.use_plugin(CudaTensorStandIn(), "cuda")


def test_reference_forced_by_env(monkeypatch):
    monkeypatch.setenv(custom_ops.REFERENCE_ENV, "1")
    assert custom_ops.reference_forced()
    monkeypatch.setenv(custom_ops.REFERENCE_ENV, "0")
    assert not custom_ops.reference_forced()


# ---------------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(up=0), "up"),
        (dict(down=(1, 0)), "down"),
        (dict(padding=-4), "padding"),
        (dict(padding=(1, 2, 3)), "padding"),
        (dict(impl="triton"), "impl"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(3), **kwargs)


def test_bad_tensors():
    with pytest.raises(ValueError, match="x must"):
        upfirdn2d(torch.zeros(1, 4, 4), torch.ones(3))
    with pytest.raises(ValueError, match="f must"):
        upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="padding"):
        downsample2d(torch.zeros(1, 1, 2, 2), setup_filter([1, 3, 3, 1]), padding=-2)


# ---------------------------------------------------------------------------------------------------------
# The CUDA path's autograd Function, run on the CPU against an emulated kernel.



class _EmulatedPlugin:
    upfirdn2d = staticmethod(_emulated_kernel)


@pytest.mark.parametrize("up,down,padding", GRAD_CASES + [((1, 2), (2, 1), (0, 3, -1, 1))])
@pytest.mark.parametrize("taps", [TAPS_1D[1], TAPS_2D, TAPS_1D[2]], ids=["1d", "2d", "1d_long"])
@pytest.mark.parametrize("flip", [False, True])
def test_cuda_function_with_emulated_kernel(monkeypatch, up, down, padding, taps, flip):
    from ops.upfirdn2d import _upfirdn2d_cuda

    monkeypatch.setattr(custom_ops, "get_plugin", lambda: _EmulatedPlugin)
    up, down = _pair(up), _pair(down)
    x = torch.randn(1, 1, 9, 10, dtype=torch.float64, requires_grad=True)
    f = torch.from_numpy(taps)
    fn = lambda x: _upfirdn2d_cuda(up, down, padding, flip, 1.3).apply(x, f)  # noqa: E731
    expected = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=1.3, impl="ref")
    torch.testing.assert_close(fn(x), expected)
    # Its backward is the same Function with swapped up/down: check it is the true gradient, twice over.
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
