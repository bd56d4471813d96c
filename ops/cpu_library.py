"""Build, cache and load `ddgan_cpu`, the CPU kernels (ops/csrc/cpu_kernels.c), through ctypes.

A plain C library rather than a torch C++ extension: the kernels need nothing from ATen, and a file that
includes no torch header compiles in about 3 s where a trivial torch extension takes 23 s (measured here), which a
student's first `ddgan sample` on a laptop would pay. It is compiled for this machine's CPU (-march=native)
with OpenMP where the compiler has it, on first use and never at import, into a directory keyed by a hash
of the source, the compiler and the CPU's identity (a home directory shared by cluster nodes of different
CPUs gets one build per CPU), under a file lock so that DDP ranks starting together build it once.

Anything that fails (no compiler, a compile error, a library that does not load) warns once and returns
None: every op then takes its PyTorch reference path. DDGAN_OPS_REFERENCE=1 skips the kernels, as for CUDA.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from filelock import FileLock

from ops import custom_ops

SOURCE = custom_ops.SOURCE_DIR / "cpu_kernels.c"
LIBRARY_NAME = "libddgan_cpu.so"
COMPILERS = ("cc", "gcc", "clang")
# Tried in order until one compiles: OpenMP and -march=native where the compiler takes them. Without
# -march=native an x86 build has no FMA or wide vectors (GCC 12 vectorises 24 loops of the 40): slower, still right.
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3",),
)
COMMON_FLAGS = ("-shared", "-fPIC", "-std=gnu11")

_library: ctypes.CDLL | None = None
_library_failed = False
_load_lock = threading.Lock()


def get_library() -> ctypes.CDLL | None:
    """The loaded CPU kernels, built on first call; None (after one warning) where that fails or is turned off."""
    global _library, _library_failed
    if custom_ops.reference_forced():
        return None
    if _library is not None or _library_failed:
        return _library
    with _load_lock:
        if _library is None and not _library_failed:
            try:
                _library = _declare(ctypes.CDLL(str(build_library())))
            except Exception as error:  # any failure must leave the reference path working
                _library_failed = True
                warnings.warn(f"ddgan_cpu: could not build or load the CPU kernels ({type(error).__name__}: "
                              f"{_shortened(str(error))}); using the slower PyTorch reference ops. Install a C "
                              f"compiler (gcc or clang, or name one in $CC), or set {custom_ops.REFERENCE_ENV}=1 "
                              f"to skip the build.", RuntimeWarning, stacklevel=3)
    return _library


def build_library(build_root: str | os.PathLike | None = None) -> Path:
    """Compile the kernels unless this machine's build of the current source exists; its path. Raises on failure."""
    compiler = find_compiler()
    library = built_library(build_root, compiler)
    if library.is_file():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(library.parent) + ".lock"):
        if library.is_file():  # another process built it while this one waited
            return library
        errors = []
        for flags in FLAG_SETS:
            # Compiled beside the target and renamed into place: a killed build never leaves half a library.
            handle, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
            os.close(handle)
            command = [compiler, *flags, *COMMON_FLAGS, str(SOURCE), "-o", partial]
            try:
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode == 0:
                    os.replace(partial, library)
                    return library
            finally:
                Path(partial).unlink(missing_ok=True)  # gone already where it became the library
            errors.append(f"$ {' '.join(command)}\n{result.stderr.strip()}")
        raise RuntimeError("the C compiler failed:\n" + "\n".join(errors))


def built_library(build_root: str | os.PathLike | None = None, compiler: str | None = None) -> Path:
    """Where this machine's build of the current source lives (or will)."""
    root = Path(build_root or custom_ops.default_build_root())
    return root / f"ddgan_cpu_{source_hash(compiler or find_compiler())[:16]}" / LIBRARY_NAME


def find_compiler() -> str:
    """$CC if set, else the first of cc, gcc and clang on the PATH; raises FileNotFoundError if none is."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(f"no C compiler on the PATH (looked for {', '.join(COMPILERS)}; $CC is unset)")


def source_hash(compiler: str) -> str:
    """Hash of what the binary depends on: the source, the flags, the compiler and the CPU it targets."""
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(repr((FLAG_SETS, COMMON_FLAGS, compiler, _cpu_identity())).encode())
    return digest.hexdigest()


def cpuinfo_value(*keys: str) -> str | None:
    """The value of the first line of /proc/cpuinfo that starts with one of `keys`; None if there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_identity() -> str:
    """The CPU's architecture and instruction-set flags: what -march=native compiles for."""
    flags = cpuinfo_value("flags", "Features")  # x86, ARM
    return platform.machine() + ":" + (flags if flags is not None else platform.processor())


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    """Give the library's functions their C signatures (ctypes would otherwise guess them from the arguments)."""
    pointer, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    forward = library.ddgan_adaptive_group_norm
    forward.argtypes = [pointer, pointer, i32, i32, pointer, pointer, pointer, i64, i64, i64, i64, ctypes.c_float,
                        i32, i32, pointer, pointer]
    backward = library.ddgan_adaptive_group_norm_backward
    backward.argtypes = [pointer, pointer, pointer, i32, i32, *[pointer] * 8, i64, i64, i64, i64, i32, i32]
    forward.restype = backward.restype = i32
    return library


def _shortened(text: str, limit: int = 2000) -> str:
    """The first `limit` characters of a compiler's complaint."""
    return text if len(text) <= limit else text[:limit] + " [...]"
