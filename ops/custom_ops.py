"""Build, cache and load the `ddgan_ops` CUDA extension (upfirdn2d + bias_act kernels).

The extension is compiled with ninja on first use, never at import. Its build directory is keyed by a hash
of the sources, the torch/CUDA versions and the target architectures, so a rebuild happens only when one
of them changes, and a file lock lets several DDP ranks start at once: one compiles, the others wait and
then load the result. A failed build warns once and leaves every op on its PyTorch reference path.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch
from filelock import FileLock

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ddgan_ops.cpp", "upfirdn2d.cu", "bias_act.cu")
HEADERS = ("ddgan_ops.h",)
REFERENCE_ENV = "DDGAN_OPS_REFERENCE"
BUILD_DIR_ENV = "DDGAN_OPS_BUILD_DIR"
IMPLS = ("cuda", "ref")

_plugin: ModuleType | None = None
_plugin_failed = False


def reference_forced() -> bool:
    """True when DDGAN_OPS_REFERENCE asks for the PyTorch reference path everywhere."""
    return os.environ.get(REFERENCE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def use_plugin(x: torch.Tensor, impl: str) -> bool:
    """Whether an op on x should try the compiled kernel (it still falls back if the build fails)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    # Under torch.compile the reference ops are traced instead: inductor fuses them into the graph,
    # where a call into the extension would break it at every resampling and activation.
    return (impl == "cuda" and x.is_cuda and x.numel() < 2**31 and not reference_forced()
            and not torch.compiler.is_compiling())


def get_plugin(verbose: bool = False) -> ModuleType | None:
    """Return the compiled extension, building it on first call; None (after one warning) if that fails."""
    global _plugin, _plugin_failed
    if _plugin is not None or _plugin_failed:
        return _plugin
    try:
        _plugin = build_plugin(verbose=verbose)
    except Exception as error:  # any build failure must leave the reference path working
        _plugin_failed = True
        reason = str(error) if len(str(error)) <= 2000 else str(error)[:2000] + " [...]"
        warnings.warn(
            f"ddgan_ops: could not build the CUDA extension ({type(error).__name__}: {reason}); "
            f"using the slower PyTorch reference ops. Set {REFERENCE_ENV}=1 to skip the build.",
            RuntimeWarning,
            stacklevel=2,
        )
    return _plugin


def build_plugin(verbose: bool = False, build_root: str | os.PathLike | None = None) -> ModuleType:
    """Compile (or reuse the cached build of) the extension and import it; raises on failure."""
    cpp_extension = _import_cpp_extension()
    name = extension_name()
    if name in sys.modules:
        return sys.modules[name]
    build_dir = Path(build_root or default_build_root()) / name
    build_dir.mkdir(parents=True, exist_ok=True)
    # An OS-level lock dies with its process, unlike torch's own lock file, which a rank killed
    # mid-build would leave behind for the others to wait on forever; so hold ours and clear theirs.
    with FileLock(str(build_dir) + ".lock"):
        (build_dir / "lock").unlink(missing_ok=True)
        module = cpp_extension.load(
            name=name,
            sources=[str(SOURCE_DIR / s) for s in SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            build_directory=str(build_dir),
            verbose=verbose,
            with_cuda=True,
        )
    return module


def built_library(build_root: str | os.PathLike | None = None) -> Path:
    """Path where the compiled shared library of the current sources lives (or will)."""
    name = extension_name()
    return Path(build_root or default_build_root()) / name / f"{name}.so"


def extension_name() -> str:
    """Module name of the current build: unique per source hash, so stale builds are never loaded."""
    return f"ddgan_ops_{source_hash()[:16]}"


def default_build_root() -> Path:
    """DDGAN_OPS_BUILD_DIR if set, else TORCH_EXTENSIONS_DIR, else torch_extensions' default directory."""
    for variable in (BUILD_DIR_ENV, "TORCH_EXTENSIONS_DIR"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    cpp_extension = _import_cpp_extension()
    return Path(cpp_extension.get_default_build_root())


def source_hash() -> str:
    """Hash of everything the compiled binary depends on: sources, Python, torch, CUDA and target archs."""
    digest = hashlib.sha256()
    for filename in SOURCES + HEADERS:
        digest.update(filename.encode())
        digest.update((SOURCE_DIR / filename).read_bytes())
    python = f"{sys.version_info.major}.{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    digest.update(f"python={python} torch={torch.__version__} cuda={torch.version.cuda}".encode())
    digest.update(f"archs={_target_archs()}".encode())
    return digest.hexdigest()


def _target_archs() -> str:
    """The GPU architectures the build targets (explicit list, else the visible devices)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{major}.{minor}" for major, minor in sorted(caps))
    return "none"


def _import_cpp_extension() -> ModuleType:
    """Import torch.utils.cpp_extension with CUDA_HOME pointing at a toolkit that has headers."""
    # torch guesses CUDA_HOME from `which nvcc` at import; a wrapper script there yields a wrong guess.
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        home = _find_cuda_home()
        if home is not None:
            os.environ["CUDA_HOME"] = str(home)
    cpp_extension = importlib.import_module("torch.utils.cpp_extension")
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and not _has_cuda_headers(cpp_extension.CUDA_HOME):
        cpp_extension.CUDA_HOME = home
    return cpp_extension


def _find_cuda_home() -> Path | None:
    """Locate a CUDA toolkit with headers: next to nvcc if it is a real binary, else /usr/local/cuda."""
    import shutil

    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if _has_cuda_headers(home):
            return home
    return None


def _has_cuda_headers(home: str | os.PathLike | None) -> bool:
    """Whether `home` is a CUDA toolkit root (contains include/cuda_runtime.h)."""
    return home is not None and (Path(home) / "include" / "cuda_runtime.h").is_file()
