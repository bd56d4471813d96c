"""The fused AdaGN op: its CPU kernel against float64 arithmetic, when it runs, and how its library is built."""

import shutil
import warnings

import pytest
import torch

from ops import adaptive_group_norm as op
from ops import cpu_library, custom_ops

needs_library = pytest.mark.skipif(cpu_library.get_library() is None, reason="the CPU kernels did not build here")
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def _inputs(shape, dtype, layout, seed=0, with_bias=True):
    generator = torch.Generator().manual_seed(seed)
    batch, channels = shape[:2]
    x = (2 * torch.randn(shape, generator=generator) + 0.5).to(dtype).contiguous(memory_format=LAYOUTS[layout])
    gamma, beta, bias = ((scale * torch.randn(batch, channels, generator=generator) + offset).to(dtype)
                         for scale, offset in ((0.3, 1.0), (0.5, 0.0), (0.4, 0.2)))
    return x, gamma, beta, bias if with_bias else None


def _exact(x, groups, gamma, beta, bias, act):
    """The op in float64: the answer the kernel should round."""
    double = [t.double() if t is not None else None for t in (x, gamma, beta, bias)]
    return op._adaptive_group_norm_ref(*double[:1], groups, *double[1:], 1e-6, act)


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("act", op.ACTIVATIONS)
@pytest.mark.parametrize("shape, groups, with_bias", [((3, 16, 5, 5), 4, True), ((2, 8, 17, 19), 2, False)])
def test_kernel_rounds_the_exact_result_once(dtype, layout, act, shape, groups, with_bias):
    # 17x19 = 323 pixels: more than one block of partial sums (256) and a tail shorter than the vector lanes.
    x, gamma, beta, bias = _inputs(shape, dtype, layout, with_bias=with_bias)
    got = op._adaptive_group_norm_cpu(x, groups, gamma, beta, bias, 1e-6, act)
    exact = _exact(x, groups, gamma, beta, bias, act)
    assert got.dtype == dtype and got.is_contiguous(memory_format=LAYOUTS[layout])
    if dtype == torch.bfloat16:
        # One rounding to bf16 (8 significant bits) is at most 2^-8 relative; float32's own error is far below.
        assert ((got.double() - exact).abs() <= 2.0**-8 * exact.abs() + 1e-6).all()
    else:
        torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5)


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", op.ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_kernel_gradients_match_float64(dtype, act, with_bias):
    layout = "nhwc"  # the kernel's gradient is NHWC only
    x, gamma, beta, bias = _inputs((2, 8, 17, 19), dtype, layout, seed=3, with_bias=with_bias)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    inputs = [t.detach().requires_grad_() for t in (x, gamma, beta, bias) if t is not None]
    y = op.AdaptiveGroupNormCpu.apply(*inputs, *([] if with_bias else [None]), 2, 1e-6, act)
    got = torch.autograd.grad((y * dy.contiguous(memory_format=LAYOUTS[layout])).sum(), inputs)
    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    exact_y = _exact(*exact_inputs[:1], 2, *exact_inputs[1:], *([] if with_bias else [None]), act)
    want = torch.autograd.grad((exact_y * dy.double()).sum(), exact_inputs)
    assert got[0].is_contiguous(memory_format=LAYOUTS[layout])
    tolerance = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: about one rounding of each gradient
    for name, g, w in zip(["x", "gamma", "beta", "bias"], got, want, strict=False):
        assert g.dtype == dtype
        assert (g.double() - w).abs().max() <= tolerance * (1 + w.abs().max()), name
    y = op.AdaptiveGroupNormCpu.apply(*inputs, *([] if with_bias else [None]), 2, 1e-6, act)
    (grad_x,) = torch.autograd.grad((y * y).sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):  # first order only, and it says so
        grad_x.sum().backward()


@needs_library
def test_kernel_gradient_refuses_nchw():
    x, gamma, beta, bias = _inputs((2, 8, 3, 3), torch.float32, "nchw")
    with pytest.raises(ValueError, match="needs NHWC x"):
        op.AdaptiveGroupNormCpu.apply(x.requires_grad_(), gamma, beta, bias, 2, 1e-6, "silu")


@needs_library
def test_a_sample_is_the_same_in_any_batch_and_thread_count():
    x, gamma, beta, bias = _inputs((5, 16, 6, 6), torch.bfloat16, "nhwc")
    batch = op._adaptive_group_norm_cpu(x, 4, gamma, beta, bias, 1e-6, "silu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = op._adaptive_group_norm_cpu(x[3:4], 4, gamma[3:4], beta[3:4], bias[3:4], 1e-6, "silu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, batch[3:4])


@needs_library
def test_nan_reaches_its_own_sample_only():
    x, gamma, beta, bias = _inputs((2, 8, 4, 4), torch.float32, "nhwc")
    x[0, 0, 1, 2] = float("nan")
    y = op._adaptive_group_norm_cpu(x, 2, gamma, beta, bias, 1e-6, "silu")
    assert y[0, :4].isnan().all() and y[1].isfinite().all()


@needs_library
def test_dispatch_runs_the_kernel_only_for_cpu_inference(monkeypatch):
    x, gamma, beta, bias = _inputs((2, 8, 3, 3), torch.float32, "nchw")
    assert custom_ops.self_checked("adaptive_group_norm", x, op._self_check_runs, devices=("cpu",))
    calls = []
    kernel = op._adaptive_group_norm_cpu
    monkeypatch.setattr(op, "_adaptive_group_norm_cpu",
                        lambda *args, **kwargs: calls.append(1) or kernel(*args, **kwargs))
    with torch.no_grad():
        op.adaptive_group_norm(x, 2, gamma, beta, bias, act="silu")
    assert len(calls) == 1
    # A gradient wanted of NHWC x: the kernel's autograd Function; of NCHW x: the reference (faster there).
    functions = []
    apply = op.AdaptiveGroupNormCpu.apply
    monkeypatch.setattr(op.AdaptiveGroupNormCpu, "apply", lambda *args: functions.append(1) or apply(*args))
    for layout, expected in (("nhwc", 1), ("nchw", 1)):
        x_grad = x.clone().contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
        op.adaptive_group_norm(x_grad, 2, gamma, beta, bias, act="silu").sum().backward()
        assert x_grad.grad is not None and x_grad.grad.abs().sum() > 0 and len(functions) == expected
    # Another dtype, not contiguous, the reference asked for: the reference runs.
    calls.clear()
    with torch.no_grad():
        op.adaptive_group_norm(x.half(), 2, gamma.half(), beta.half(), bias.half())
        op.adaptive_group_norm(x, 2, gamma, beta, bias, impl="ref")
        op.adaptive_group_norm(x[:, :, :, :2], 2, gamma, beta, bias)  # not contiguous
        monkeypatch.setenv(custom_ops.REFERENCE_ENV, "1")
        op.adaptive_group_norm(x, 2, gamma, beta, bias)
    assert not calls


def test_bad_arguments_are_named():
    x, gamma, beta, bias = _inputs((2, 8, 3, 3), torch.float32, "nchw")
    with pytest.raises(ValueError, match="gamma must have one value per sample and channel"):
        op.adaptive_group_norm(x, 2, gamma[:1], beta)
    with pytest.raises(ValueError, match="num_groups must divide the 8 channels"):
        op.adaptive_group_norm(x, 3, gamma, beta)
    with pytest.raises(ValueError, match="act must be one of"):
        op.adaptive_group_norm(x, 2, gamma, beta, act="relu")


@needs_library
def test_generator_with_the_kernel_matches_its_reference_path(monkeypatch):
    from ddgan.config import make_config
    from ddgan.models import build_generator

    config = make_config("demo", num_channels_dae=16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = build_generator(config).eval()
        x = torch.randn(3, config.num_channels, config.image_size, config.image_size)
        t, z = torch.tensor([0, 1, 2]), torch.randn(3, config.nz)
        for module in G.modules():  # a fresh G's last convs are zero: give the norms something to do
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.normal_(module.weight, std=0.1)
    with torch.no_grad():
        fused = G(x, t, z)
        monkeypatch.setenv(custom_ops.REFERENCE_ENV, "1")
        reference = G(x, t, z)
    assert (fused - reference).abs().max() > 0  # the kernel did run
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# The library's build.


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """cpu_library as if never loaded in this process, building under tmp_path."""
    monkeypatch.setattr(cpu_library, "_library", None)
    monkeypatch.setattr(cpu_library, "_library_failed", False)
    monkeypatch.setenv(custom_ops.BUILD_DIR_ENV, str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("compiler", ["false", "/nonexistent/cc"])  # fails; cannot even start
def test_failed_build_warns_once_and_falls_back(fresh_library, monkeypatch, compiler):
    monkeypatch.setenv("CC", compiler)
    with pytest.warns(RuntimeWarning, match="could not build or load the CPU kernels"):
        assert cpu_library.get_library() is None
    assert not list(fresh_library.rglob("*.so"))  # no half-built library left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_library.get_library() is None
        x, gamma, beta, bias = _inputs((2, 8, 3, 3), torch.float32, "nchw")
        with torch.no_grad():
            y = op.adaptive_group_norm(x, 2, gamma, beta, bias, act="silu")
    torch.testing.assert_close(y, op._adaptive_group_norm_ref(x, 2, gamma, beta, bias, 1e-6, "silu"))


@pytest.mark.skipif(cpu_library.get_library() is None, reason="no working C compiler here")
def test_build_is_cached_and_keyed_by_source_and_cpu(fresh_library, monkeypatch, tmp_path):
    library = cpu_library.build_library()
    assert library.is_file() and library.parent.parent == fresh_library
    built_at = library.stat().st_mtime_ns
    assert cpu_library.build_library() == library and library.stat().st_mtime_ns == built_at
    assert [path.name for path in library.parent.iterdir()] == [library.name]  # no temporary file left
    compiler = cpu_library.find_compiler()
    before = cpu_library.source_hash(compiler)
    with monkeypatch.context() as patch:
        patch.setattr(cpu_library, "_cpu_identity", lambda: "another cpu")
        assert cpu_library.source_hash(compiler) != before
    edited = tmp_path / "edited.c"
    shutil.copy(cpu_library.SOURCE, edited)
    edited.write_text(edited.read_text() + "\n// edited\n")
    monkeypatch.setattr(cpu_library, "SOURCE", edited)
    assert cpu_library.source_hash(compiler) != before
