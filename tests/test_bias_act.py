"""Reference bias_act against direct formulas, plus gradients, dispatch and errors."""

import math
import re
from pathlib import Path

import pytest
import torch

from ops.bias_act import ACTIVATIONS, bias_act
from tests.helpers import SELU_ALPHA, SELU_SCALE, value_and_two_derivatives
from tests.helpers import EmulatedBiasActPlugin as _EmulatedPlugin

SQRT2 = math.sqrt(2)

# Each activation written out from its textbook formula, with its documented default gain.
FORMULAS = {
    "linear": (lambda z: z, 1.0),
    "relu": (lambda z: torch.where(z > 0, z, 0.0), SQRT2),
    "lrelu": (lambda z: torch.where(z > 0, z, 0.2 * z), SQRT2),
    "tanh": (lambda z: (torch.exp(2 * z) - 1) / (torch.exp(2 * z) + 1), 1.0),
    "sigmoid": (lambda z: 1 / (1 + torch.exp(-z)), 1.0),
    "elu": (lambda z: torch.where(z > 0, z, torch.exp(z) - 1), 1.0),
    "selu": (lambda z: SELU_SCALE * torch.where(z > 0, z, SELU_ALPHA * (torch.exp(z) - 1)), 1.0),
    "softplus": (lambda z: torch.log1p(torch.exp(z)), 1.0),
    "silu": (lambda z: z / (1 + torch.exp(-z)), 1.0),
    "swish": (lambda z: z / (1 + torch.exp(-z)), 1.0),
}


pytestmark = pytest.mark.usefixtures("seeded_single_thread")


def test_every_activation_has_a_formula():
    assert set(FORMULAS) == set(ACTIVATIONS)


@pytest.mark.parametrize("act", sorted(FORMULAS))
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_formula(act, dim, with_bias):
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64) * 2
    b = torch.randn(x.shape[dim], dtype=torch.float64) if with_bias else None
    formula, def_gain = FORMULAS[act]
    shape = [-1 if i == dim else 1 for i in range(x.ndim)]
    z = x + b.reshape(shape) if with_bias else x
    torch.testing.assert_close(bias_act(x, b, dim=dim, act=act, impl="ref"), formula(z) * def_gain)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "silu"])
def test_explicit_gain_alpha_and_clamp(act):
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64) * 3
    b = torch.randn(8, dtype=torch.float64)
    z = x + b[None, :, None, None]
    formula, _ = FORMULAS[act]
    expected = formula(z) * 0.7
    if act == "lrelu":
        expected = torch.where(z > 0, z, 0.05 * z) * 0.7
    expected = expected.clamp(-0.5, 0.5)
    got = bias_act(x, b, act=act, alpha=0.05, gain=0.7, clamp=0.5, impl="ref")
    torch.testing.assert_close(got, expected)
    assert got.abs().max() <= 0.5


def test_negative_dim_and_2d_input():
    x = torch.randn(5, 7)
    b = torch.randn(7)
    torch.testing.assert_close(bias_act(x, b, dim=-1, act="relu"), torch.relu(x + b) * SQRT2)
    torch.testing.assert_close(bias_act(x, b, dim=1, act="relu"), torch.relu(x + b) * SQRT2)


def test_channels_last():
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    b = torch.randn(6, dtype=torch.float64)
    formula, def_gain = FORMULAS["lrelu"]
    got = bias_act(x, b, act="lrelu", impl="ref")
    torch.testing.assert_close(got, formula(x + b[None, :, None, None]) * def_gain)


@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("tanh", 0.8), ("silu", None), ("linear", 1.0)])
def test_gradcheck(act, clamp):
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():  # keep samples away from the kinks, where finite differences are meaningless
        x += 0.05 * torch.sign(x)
    fn = lambda x, b: bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


class _SpyPlugin:
    """A kernel that records its calls and returns zeros, so that being used shows in calls and output."""

    def __init__(self):
        self.calls = 0

    def bias_act(self, x, b, dy, grad, *args):
        self.calls += 1
        return torch.zeros_like(x)


def test_cpu_tensors_take_the_reference_path_even_with_impl_cuda(monkeypatch):
    """The kernel reads device memory only, so CPU tensors must never reach it, even when it is available."""
    from ops import custom_ops

    plugin = _SpyPlugin()
    monkeypatch.setattr(custom_ops, "get_plugin", lambda: plugin)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    expected = torch.where(x + b[:, None, None] > 0, x + b[:, None, None], 0.2 * (x + b[:, None, None])) * SQRT2
    for impl in ({}, {"impl": "cuda"}):  # the default is "cuda"
        torch.testing.assert_close(bias_act(x, b, act="lrelu", **impl), expected)
    assert plugin.calls == 0
    # The spy does see a call when the dispatch picks the kernel, so the count above means something.
    monkeypatch.setattr(custom_ops, "use_plugin", lambda x, impl: True)
    assert bias_act(x, b, act="lrelu").abs().max() == 0 and plugin.calls == 1


def test_bad_input():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="act"):
        bias_act(x, act="gelu2")
    with pytest.raises(ValueError, match="b must"):
        bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match="b must"):
        bias_act(x, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="dim"):
        bias_act(x, torch.zeros(3), dim=4)
    with pytest.raises(ValueError, match="clamp"):
        bias_act(x, clamp=-1)
    with pytest.raises(ValueError, match="impl"):
        bias_act(x, impl="triton")


# ---------------------------------------------------------------------------------------------------------
# The CUDA path's autograd Functions, run on the CPU against an emulated kernel.



@pytest.mark.parametrize("act", sorted(FORMULAS))
@pytest.mark.parametrize("clamp", [None, 0.9])
def test_cuda_functions_with_emulated_kernel(monkeypatch, act, clamp):
    from ops.bias_act import _bias_act_cuda

    monkeypatch.setattr("ops.custom_ops.get_plugin", lambda: _EmulatedPlugin)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():  # keep samples away from the kinks, where finite differences are meaningless
        x += 0.05 * torch.sign(x)
    x.requires_grad_()
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: _bias_act_cuda(2, act, 0.1, 1.3, clamp if clamp is not None else -1.0).apply(x, b)  # noqa: E731
    torch.testing.assert_close(fn(x, b), bias_act(x, b, dim=2, act=act, alpha=0.1, gain=1.3, clamp=clamp))
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))



@pytest.mark.parametrize("act,x,clamp", [("elu", 0.0, None), ("selu", 0.0, None), ("tanh", 0.5, 1.3 * math.tanh(0.5)),
                                          ("linear", -0.7, 0.7 * 1.3), ("lrelu", 0.0, None)])
def test_emulated_kernel_agrees_with_torch_at_the_edges(monkeypatch, act, x, clamp):
    """The kernel's rules at kinks and clamp bounds (mirrored by the emulation) are torch's rules."""
    from ops.bias_act import _bias_act_cuda

    monkeypatch.setattr("ops.custom_ops.get_plugin", lambda: _EmulatedPlugin)
    xs = torch.tensor([x], dtype=torch.float64)
    kernel = _bias_act_cuda(0, act, 0.2, 1.3, clamp if clamp is not None else -1.0)
    got = value_and_two_derivatives(lambda v: kernel.apply(v, v.new_empty([0])), xs)
    want = value_and_two_derivatives(
        lambda v: bias_act(v, dim=0, act=act, alpha=0.2, gain=1.3, clamp=clamp, impl="ref"), xs)
    for got_one, want_one in zip(got, want, strict=True):
        torch.testing.assert_close(got_one, want_one)


def test_kernel_path_refuses_third_order_gradients(monkeypatch):
    """R1 needs second order; a third would silently miss the curvature kernel's own derivative, so it raises."""
    from ops.bias_act import _bias_act_cuda

    monkeypatch.setattr("ops.custom_ops.get_plugin", lambda: _EmulatedPlugin)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = _bias_act_cuda(1, "tanh", 0.2, 1.0, -1.0).apply(x, x.new_empty([0]))
    (first,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.square().sum(), x, create_graph=True)
    torch.testing.assert_close(second, (2 * (1 - x.tanh() ** 2) * -2 * x.tanh() * (1 - x.tanh() ** 2)).detach())
    with pytest.raises(RuntimeError, match="once_differentiable"):
        second.sum().backward()


def test_activation_ids_match_the_kernel():
    source = (Path(__file__).resolve().parents[1] / "ops" / "csrc" / "bias_act.cu").read_text()
    kernel_ids = {name.lower(): int(i) for name, i in re.findall(r"\bk(\w+) = (\d+),", source)}
    for name, spec in ACTIVATIONS.items():
        assert kernel_ids["silu" if name == "swish" else name] == spec.cuda_idx
