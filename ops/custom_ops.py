"""Build, cache and load the `ddgan_ops` CUDA extension (upfirdn2d + bias_act kernels).

The extension is compiled with ninja on first use, never at import. Its build directory is keyed by a hash
of the sources, the torch/CUDA versions and the target architectures, so a rebuild happens only when one
of them changes, and a file lock lets several DDP ranks start at once: one compiles, the others wait and
then load the result. A failed build warns once and leaves every op on its PyTorch reference path.

Each kernel also checks itself: the first time an op would run its kernel in a process, `self_checked`
compares it with the op's reference on a small input (forward and backward); a kernel that disagrees
(or raises) warns once, naming the op, and that op takes its reference path from then on.
`self_check_report()` says what each check found and what it cost.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
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

# Only CUDA tensors ever reach a kernel of ddgan_ops (the CPU kernels' ops name their own device). Tests
# that force the kernel path on the CPU with a stand-in for the extension add "cpu" here to check it too.
SELF_CHECK_DEVICES = ("cuda",)
# Largest |kernel - reference| allowed, relative to 1 + the reference's largest magnitude. A broken kernel
# (wrong architecture, bad indexing) is off by O(1); a sound one by rounding, which the CUDA tests bound
# tightly. Here rounding must never pass for breakage: in float32 the reference's convolutions may run in
# TF32 (cuDNN's default), about 1e-3 off, and in half types it rounds every intermediate, the kernel once.
SELF_CHECK_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 6e-2}
DEFAULT_SELF_CHECK_TOLERANCE = 1e-2

_plugin: ModuleType | None = None
_plugin_failed = False
_self_checks: dict[str, dict] = {}
_self_check_lock = threading.Lock()


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


# A check's two runs: each returns the same list of tensors (outputs, then gradients) on the same inputs.
CheckRuns = tuple[Callable[[], Sequence[torch.Tensor]], Callable[[], Sequence[torch.Tensor]]]


def self_checked(op_name: str, x: torch.Tensor, make_runs: Callable[[torch.Tensor], CheckRuns],
                 devices: Sequence[str] | None = None) -> bool:
    """Whether op_name may run its compiled kernel on x: checked against its reference once per process.

    `devices` are where the op's kernels run (default SELF_CHECK_DEVICES, the CUDA ops'); elsewhere no check.

    make_runs(x) gives (run_kernel, run_reference) on a small input of x's device, dtype and layout; it is
    called only the first time. Under torch.compile tracing and during CUDA graph capture an op not
    checked yet takes its reference path for that call, unchecked: a check there would be traced or would
    sync inside the capture, which breaks it. The next call outside them runs the check. (Capturing code
    normally warms up first, as ddgan.sampling.capture_cuda_graph does, so the check is already done.)
    """
    result = _self_checks.get(op_name)
    if result is not None:
        return result["ok"]
    if x.device.type not in (devices or SELF_CHECK_DEVICES):
        return True
    if reference_forced() or torch.compiler.is_compiling() or _capturing(x):
        return False
    with _self_check_lock:
        if op_name not in _self_checks:
            _self_checks[op_name] = _compare_kernel(op_name, x, make_runs)
    return _self_checks[op_name]["ok"]


def self_check_report() -> dict[str, dict]:
    """{op: {"ok", "seconds", "max_error"}} for every op whose kernel checked itself in this process."""
    return {op: dict(result) for op, result in _self_checks.items()}


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether x is laid out NHWC (and not also NCHW, as tensors with one channel or pixel are)."""
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _capturing(x: torch.Tensor) -> bool:
    """Whether x's CUDA stream is recording a CUDA graph."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _compare_kernel(op_name: str, x: torch.Tensor, make_runs: Callable[[torch.Tensor], CheckRuns]) -> dict:
    """Run both paths, time it all, and warn (once: the result is cached) when the kernel is off or raises."""
    started = time.perf_counter()
    failure = None
    # The caller may be sampling under no_grad, inference_mode or autocast; the check needs gradients
    # and each path at the dtype it was given.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        try:
            run_kernel, run_reference = make_runs(x)
            got, expected = run_kernel(), run_reference()
            error = _max_error(got, expected)
            tolerance = SELF_CHECK_TOLERANCE.get(expected[0].dtype, DEFAULT_SELF_CHECK_TOLERANCE)
        except Exception as exception:  # e.g. "no kernel image is available": the build targets another GPU
            error, tolerance = math.inf, DEFAULT_SELF_CHECK_TOLERANCE
            failure = f"{type(exception).__name__}: {exception}"
    ok = error <= tolerance
    seconds = time.perf_counter() - started
    if not ok:
        found = failure or f"max error {error:.3g} against a tolerance of {tolerance:.3g}"
        warnings.warn(f"ddgan_ops: the compiled {op_name} kernel failed its self-check against the PyTorch "
                      f"reference ({found}); {op_name} takes the reference path from now on. Rebuild the "
                      f"extension, or set {REFERENCE_ENV}=1 to skip it.", RuntimeWarning, stacklevel=4)
    return {"ok": ok, "seconds": seconds, "max_error": error}


def _max_error(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """Largest |got - expected| over the paired tensors, each relative to 1 + max |expected|; inf if unusable."""
    if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected, strict=True)):
        return math.inf
    errors = [(g.float() - e.float()).abs().max() / (1 + e.float().abs().max())
              for g, e in zip(got, expected, strict=True)]
    error = torch.stack(errors).max().item()  # the check's one host sync
    return error if math.isfinite(error) else math.inf


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
    """DDGAN_OPS_BUILD_DIR if set, else TORCH_EXTENSIONS_DIR, else torch_extensions' default directory
    ($XDG_CACHE_HOME or ~/.cache, then torch_extensions), found without importing torch.utils.cpp_extension, which
    logs a warning about CUDA on every machine without it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return build_root_from_env() or cache / "torch_extensions"


def build_root_from_env() -> Path | None:
    """DDGAN_OPS_BUILD_DIR if set, else TORCH_EXTENSIONS_DIR if set, else None."""
    for variable in (BUILD_DIR_ENV, "TORCH_EXTENSIONS_DIR"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    return None


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
