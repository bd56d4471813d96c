"""The kernels' self-check, on the CPU: stand-ins for the compiled extension, one right and one wrong."""

import warnings

import pytest
import torch

from ops import custom_ops
from ops.bias_act import bias_act
from ops.upfirdn2d import setup_filter, upsample2d
from tests.helpers import EmulatedBiasActPlugin as _EmulatedBiasAct
from tests.helpers import emulated_upfirdn2d_kernel as _emulated_upfirdn2d

pytestmark = pytest.mark.usefixtures("seeded_single_thread")


class _Kernels:
    """A stand-in for the extension that counts its calls per op: the emulated kernels, or zeros when wrong."""

    def __init__(self, wrong: frozenset = frozenset(), raises: frozenset = frozenset()):
        self.wrong, self.raises = wrong, raises
        self.calls = {"upfirdn2d": 0, "bias_act": 0}

    def _called(self, op: str) -> bool:
        self.calls[op] += 1
        if op in self.raises:
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        return op in self.wrong

    def upfirdn2d(self, x, f, *args):
        right = _emulated_upfirdn2d(x, f, *args)
        return torch.zeros_like(right) if self._called("upfirdn2d") else right

    def bias_act(self, x, b, dy, grad, *args):
        right = _EmulatedBiasAct.bias_act(x, b, dy, grad, *args)
        return torch.zeros_like(right) if self._called("bias_act") else right


@pytest.fixture
def install(monkeypatch):
    """Put a stand-in where the compiled extension goes, let CPU tensors reach it, and forget earlier checks."""
    monkeypatch.setattr(custom_ops, "_self_checks", {})
    monkeypatch.setattr(custom_ops, "SELF_CHECK_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(custom_ops, "use_plugin", lambda x, impl: impl == "cuda")
    monkeypatch.delenv(custom_ops.REFERENCE_ENV, raising=False)

    def put(kernels: _Kernels) -> _Kernels:
        monkeypatch.setattr(custom_ops, "get_plugin", lambda: kernels)
        return kernels

    return put


def _upsample(x, impl="cuda"):
    return upsample2d(x, setup_filter([1, 3, 3, 1]), impl=impl)


def _lrelu(x, impl="cuda"):
    return bias_act(x, torch.linspace(-1, 1, x.shape[1]), act="lrelu", impl=impl)


OPS = {"upfirdn2d": (_upsample, "Upfirdn2dCuda"), "bias_act": (_lrelu, "BiasActCuda")}


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_right_kernel_passes_and_is_used_from_then_on(install, op):
    kernels = install(_Kernels())
    run, function_name = OPS[op]
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = run(x)
    checked = kernels.calls[op]
    assert checked > 0, "the check ran the kernel"
    report = custom_ops.self_check_report()
    assert list(report) == [op] and report[op]["ok"] and report[op]["max_error"] < 1e-5
    assert 0 < report[op]["seconds"] < 1
    assert function_name in type(y.grad_fn).__name__
    torch.testing.assert_close(y, run(x, impl="ref"))
    run(x)
    assert kernels.calls[op] == checked + 1 and custom_ops.self_check_report() == report  # no second check


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_wrong_kernel_warns_once_and_its_op_takes_the_reference_path(install, op):
    kernels = install(_Kernels(wrong=frozenset([op])))
    run, _ = OPS[op]
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(RuntimeWarning) as caught:
        y = run(x)
    assert len(caught) == 1 and f"compiled {op} kernel failed its self-check" in str(caught[0].message)
    torch.testing.assert_close(y, run(x, impl="ref"))
    report = custom_ops.self_check_report()[op]
    assert not report["ok"] and report["max_error"] > 0.1
    checked = kernels.calls[op]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        for _ in range(3):
            torch.testing.assert_close(run(x), y)
    assert kernels.calls[op] == checked, "the wrong kernel was called again for real work"


def test_each_op_is_judged_on_its_own(install):
    kernels = install(_Kernels(wrong=frozenset(["bias_act"])))
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(RuntimeWarning, match="bias_act"):
        _lrelu(x)
    before = kernels.calls["upfirdn2d"]
    _upsample(x)
    _upsample(x)
    report = custom_ops.self_check_report()
    assert report["upfirdn2d"]["ok"] and not report["bias_act"]["ok"]
    assert kernels.calls["upfirdn2d"] > before + 2, "upfirdn2d's kernel checked, then used twice"


def test_a_kernel_that_raises_is_a_failed_check(install):
    install(_Kernels(raises=frozenset(["upfirdn2d"])))
    x = torch.randn(1, 2, 4, 4)
    with pytest.warns(RuntimeWarning, match="upfirdn2d.*no kernel image"):
        torch.testing.assert_close(_upsample(x), _upsample(x, impl="ref"))
    assert custom_ops.self_check_report()["upfirdn2d"]["max_error"] == float("inf")


def test_the_check_needs_nothing_from_the_caller_and_changes_nothing(install):
    """Sampling calls the ops under inference_mode and autocast; the check still compares both paths with
    gradients at the caller's dtype, and leaves the global random stream where it was."""
    install(_Kernels())
    x = torch.randn(2, 3, 6, 6)
    state = torch.get_rng_state()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        _upsample(x)
        _lrelu(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(result["ok"] for result in custom_ops.self_check_report().values())
    assert set(custom_ops.self_check_report()) == {"upfirdn2d", "bias_act"}


def test_layout_and_dtype_follow_the_first_call(install):
    seen = []
    kernels = install(_Kernels())
    original = kernels.upfirdn2d
    kernels.upfirdn2d = lambda x, *args: seen.append((x.dtype, custom_ops.is_channels_last(x))) or original(x, *args)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    _upsample(x)
    assert seen[0] == (torch.float64, True)


@pytest.mark.parametrize("where", ["compiling", "capturing", "reference_env"])
def test_no_check_while_tracing_capturing_or_forced_to_the_reference(install, monkeypatch, where):
    kernels = install(_Kernels())
    x = torch.randn(1, 2, 4, 4)
    with monkeypatch.context() as inside:
        if where == "compiling":
            inside.setattr(torch.compiler, "is_compiling", lambda: True)
        elif where == "capturing":
            inside.setattr(custom_ops, "_capturing", lambda x: True)
        else:
            inside.setenv(custom_ops.REFERENCE_ENV, "1")
        torch.testing.assert_close(_upsample(x), _upsample(x, impl="ref"))
    assert kernels.calls["upfirdn2d"] == 0 and custom_ops.self_check_report() == {}
    _upsample(x)  # out of the trace, the capture or the variable: this call checks
    assert custom_ops.self_check_report()["upfirdn2d"]["ok"]


def test_real_kernels_are_checked_only_on_their_device(monkeypatch):
    """Without the fixture only CUDA tensors are checked: a stand-in given CPU tensors is used as it is."""
    monkeypatch.setattr(custom_ops, "_self_checks", {})
    make_runs = pytest.fail  # must not be called
    assert custom_ops.self_checked("upfirdn2d", torch.zeros(1), make_runs)
    assert custom_ops.self_check_report() == {}


def test_report_is_a_copy(install):
    install(_Kernels())
    _upsample(torch.randn(1, 1, 4, 4))
    custom_ops.self_check_report()["upfirdn2d"]["ok"] = False
    assert custom_ops.self_check_report()["upfirdn2d"]["ok"]
