"""Compile the ddgan_ops CUDA extension (needs nvcc, not a GPU) and check the build cache and fallback."""

import os
import shutil
import warnings

import pytest

from ops import custom_ops


def _cuda_toolkit_present() -> bool:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    return shutil.which("nvcc") is not None or custom_ops._has_cuda_headers(home)


@pytest.mark.skipif(not _cuda_toolkit_present(), reason="no CUDA toolkit (nvcc / CUDA_HOME) on this host")
def test_extension_compiles_and_links(monkeypatch):
    # Without a visible GPU torch cannot pick the architecture itself; one target keeps the build short.
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    library = custom_ops.built_library()
    try:
        module = custom_ops.build_plugin()
    except ImportError:
        # Compiled and linked, but this host cannot load CUDA's runtime libraries; the .so is the proof.
        module = None
    # A compile or link error raises RuntimeError above (with nvcc's output) and fails the test.
    assert library.is_file() and library.stat().st_size > 0
    if module is not None:
        assert callable(module.upfirdn2d) and callable(module.bias_act)
        # The second call finds the module already loaded instead of rebuilding.
        assert custom_ops.build_plugin() is module


def test_hash_follows_sources(tmp_path, monkeypatch):
    for name in custom_ops.SOURCES + custom_ops.HEADERS:
        shutil.copy(custom_ops.SOURCE_DIR / name, tmp_path / name)
    monkeypatch.setattr(custom_ops, "SOURCE_DIR", tmp_path)
    before = custom_ops.source_hash()
    assert custom_ops.source_hash() == before
    with open(tmp_path / custom_ops.SOURCES[1], "a") as source:
        source.write("\n// edited\n")
    assert custom_ops.source_hash() != before
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    edited = custom_ops.source_hash()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert custom_ops.source_hash() != edited


def test_build_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch"))
    assert custom_ops.default_build_root() == tmp_path / "torch"
    monkeypatch.setenv(custom_ops.BUILD_DIR_ENV, str(tmp_path))
    assert custom_ops.default_build_root() == tmp_path
    assert custom_ops.built_library().parent.parent == tmp_path


def test_failed_build_warns_once_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(custom_ops, "SOURCE_DIR", tmp_path)  # no sources: the build must fail
    monkeypatch.setattr(custom_ops, "_plugin", None)
    monkeypatch.setattr(custom_ops, "_plugin_failed", False)
    with pytest.warns(RuntimeWarning, match=custom_ops.REFERENCE_ENV):
        assert custom_ops.get_plugin() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert custom_ops.get_plugin() is None
