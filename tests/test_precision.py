"""--amp: one rule for training and sampling, auto by default."""

import warnings

import pytest
import torch

from ddgan.config import make_config
from ddgan.runtime import precision
from ops import cpu_library


@pytest.mark.parametrize(("native", "parameters", "expected"), [
    (True, precision.AUTO_CPU_MIN_PARAMETERS, torch.bfloat16), (True, 1_500_000, None),
    (False, 50_000_000, None), (True, None, None)])
def test_auto_on_the_cpu_follows_native_bf16_and_size(monkeypatch, native, parameters, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.amp_dtype("auto", "cpu", parameters) is expected
    assert precision.amp_dtype(None, "cpu", parameters) is expected, "None (older configs) means auto"


def test_auto_is_bf16_on_cuda_and_explicit_choices_win():
    assert precision.amp_dtype("auto", "cuda") is torch.bfloat16
    assert precision.amp_dtype("none", "cuda") is None
    assert precision.amp_dtype("fp16", "cpu") is torch.float16
    with pytest.raises(ValueError, match="--amp must be auto, bf16, fp16 or none, got 'fp8'"):
        precision.amp_dtype("fp8", "cpu")
    assert make_config("demo").amp == "auto"


def test_bf16_on_a_cpu_without_it_warns_once_and_proceeds(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    precision.warn_slow_bf16.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.amp_dtype("bf16", "cpu") is torch.bfloat16
        assert precision.amp_dtype("bf16", "cpu") is torch.bfloat16
    slow = [w for w in caught if "no native bf16" in str(w.message)]
    assert len(slow) == 1 and "proceeding" in str(slow[0].message)
    precision.warn_slow_bf16.cache_clear()


@pytest.mark.parametrize(("flags", "native"), [("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16", True),
                                               ("fpu avx512f avx512bw", False)])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    class FakePath:
        def __init__(self, path):
            assert path == "/proc/cpuinfo"

        def read_text(self):
            return f"processor : 0\nflags : {flags}\n"

    monkeypatch.setattr(cpu_library, "Path", FakePath)  # where /proc/cpuinfo is read
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert precision.cpu_has_native_bf16() is native
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_training_layout_is_nhwc_by_default_on_cuda_and_for_bf16_on_the_cpu(monkeypatch):
    from ddgan.runtime.precision import run_precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # no slow-bf16 warning on any CPU
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    config = make_config("cifar10")
    assert config.channels_last is None
    assert run_precision("bf16", cpu, channels_last=config.channels_last) == (torch.bfloat16, True)
    assert run_precision("none", cpu, channels_last=config.channels_last) == (None, False)
    assert run_precision("none", cuda, channels_last=config.channels_last) == (None, True)
    assert run_precision("bf16", cpu, channels_last=make_config("cifar10", channels_last=False).channels_last)[1] \
        is False
    # The demo preset's own choice.
    assert run_precision("bf16", cpu, channels_last=make_config("demo").channels_last)[1] is False
