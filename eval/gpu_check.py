"""`make gpu-check`: everything this code promises on one NVIDIA GPU, checked in at most 8 minutes.

In order, each phase with its own time limit and never past the whole budget:

1. build: compile (or load the cached build of) the ddgan_ops extension, timed, then run each kernel
   once so that it checks itself against its reference (ops.custom_ops.self_check_report);
2. cuda_tests: `pytest tests/test_ops_cuda.py` in a subprocess (kernels against the reference: forward,
   backward and double backward over dtypes and layouts), with its pass/fail counts;
3. train: 200 iterations of the `demo` preset on the GPU, whose losses must behave as on the CPU
   (`training_healthy`);
4. bench: the GPU rows of BENCHMARKS.md through eval.benchmark.bench, the costly torch.compile rows last,
   each with its roofline (FLOPs per image, TFLOP/s, and the share of the matmul and conv ceilings
   measured on this GPU in the row's dtype, as `ddgan bench` prints them: eval/roofline.py).

It writes gpu-check.md (tables) and gpu-check.jsonl (one JSON object per check) into --out and exits 1
when any check fails: a failing or skipped CUDA test, a kernel failing its self-check, unhealthy losses,
a benchmark that raises, a phase out of time. Without a CUDA device it prints one line and exits 0 once
it has checked that all it would run imports and sets up (CI runs it so); it then writes nothing.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval/gpu_check.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ddgan.config import make_config
from eval import benchmark
from eval.gpu_report import Record, write_report
from eval.gpu_training import read_losses, training_healthy
from ops import custom_ops

REPO = Path(__file__).resolve().parents[1]
CUDA_TESTS = "tests/test_ops_cuda.py"
BUDGET_S = 480.0
# Each phase's own limit in seconds; it also stops where the whole budget ends. The bench phase, last,
# gets what is left. A fresh build of the extension took 51 s on 2 busy CPU cores (its three sources
# compile in parallel), so 240 s leaves room for a slower host.
PHASE_LIMITS_S = {"build": 240.0, "cuda_tests": 150.0, "train": 120.0, "bench": BUDGET_S}
SELF_CHECK_LIMIT_S = 1.0
TRAIN_STEPS = 200
TRAIN_LOG_EVERY = 5  # 40 logged points over 200 steps

# The GPU rows of BENCHMARKS.md: (label, bench flags, the label of the row it is compared with).
# 1 000 images are one batch of 1 000 (one CUDA graph), as `ddgan sample --batch=1000` would run them;
# 256 px sampling runs its full 100 images (T = 2): the U-Net's activations at batch 100 take a few GiB.
# Each wavelet preset follows its pixel twin, at equal settings. Training uses the cifar10 preset's
# per-GPU batch of 64 (256 over the original's 4 GPUs). The torch.compile rows come last: compiling
# takes minutes, and a budget spent there leaves every other row measured.
_SAMPLE_100 = dict(what="sample", preset="cifar10", batch=100)
_TRAIN_64 = dict(what="train", preset="cifar10", batch=64)
BENCH_ROWS: tuple[tuple[str, dict, str | None], ...] = (
    ("cifar10 sample 100, fp32 eager", dict(_SAMPLE_100, amp="none", channels_last=False), None),
    ("cifar10 sample 100, bf16", dict(_SAMPLE_100, amp="bf16"), "cifar10 sample 100, fp32 eager"),
    ("cifar10 sample 100, bf16 + CUDA graph", dict(_SAMPLE_100, amp="bf16", cuda_graph=True),
     "cifar10 sample 100, fp32 eager"),
    ("cifar10_wavelet sample 100, bf16 + CUDA graph",
     dict(_SAMPLE_100, preset="cifar10_wavelet", amp="bf16", cuda_graph=True), "cifar10 sample 100, bf16 + CUDA graph"),
    ("cifar10 sample 1000 (one batch), bf16 + CUDA graph",
     dict(_SAMPLE_100, batch=1000, amp="bf16", cuda_graph=True, repeats=5, warmup=1), None),
    ("celeba256 sample 100 (T=2), bf16 + CUDA graph",
     dict(_SAMPLE_100, preset="celeba256", amp="bf16", cuda_graph=True, repeats=5, warmup=1), None),
    ("celeba256_wavelet sample 100 (T=2), bf16 + CUDA graph",
     dict(_SAMPLE_100, preset="celeba256_wavelet", amp="bf16", cuda_graph=True, repeats=5, warmup=1),
     "celeba256 sample 100 (T=2), bf16 + CUDA graph"),
    ("cifar10 train batch 64, fp32 eager", dict(_TRAIN_64, amp="none", channels_last=False), None),
    ("cifar10 train batch 64, bf16", dict(_TRAIN_64, amp="bf16"), "cifar10 train batch 64, fp32 eager"),
    ("cifar10 sample 100, bf16 + compile + CUDA graph",
     dict(_SAMPLE_100, amp="bf16", compile=True, cuda_graph=True), "cifar10 sample 100, fp32 eager"),
    ("cifar10 train batch 64, bf16 + compile", dict(_TRAIN_64, amp="bf16", compile=True),
     "cifar10 train batch 64, fp32 eager"),
)


# What a benchmark row's record keeps of eval.benchmark.bench's result: the timings and the roofline.
BENCH_KEYS = ("what", "preset", "batch", "T", "dtype", "channels_last", "compile", "cuda_graph", "ms_median",
              "ms_mean", "images_per_s", "iters_per_s", "peak_mem_mb", "flops_per_image", "tflops",
              "ceiling_tflops", "ceiling_matmul_tflops", "ceiling_conv_tflops", "ceiling_conv",
              "percent_of_ceiling")


class PhaseTimeout(BaseException):
    """A phase ran past its limit (a BaseException, so that no `except Exception` inside it swallows it)."""


# ---------------------------------------------------------------------------------------------------------
# The command.


def gpu_check(out: str = "runs/gpu-check", budget_s: float = BUDGET_S, train_steps: int = TRAIN_STEPS) -> None:
    """Check this code on the one NVIDIA GPU here in at most --budget_s seconds; write gpu-check.md and
    gpu-check.jsonl into --out and exit 1 if any check fails (see eval/gpu_check.py). Without a CUDA
    device: one line, exit 0, after checking that all it would run imports and sets up.

    out: the folder for gpu-check.md, gpu-check.jsonl, the CUDA tests' log and the demo run.
    budget_s: the whole check's time budget; by default 8 minutes, kernel build included.
    train_steps: iterations of the demo training run (at least 20, for four logged points).
    """
    if isinstance(budget_s, bool) or not isinstance(budget_s, int | float) or budget_s <= 0:
        raise ValueError(f"--budget_s must be a positive number of seconds, got {budget_s!r}")
    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 4 * TRAIN_LOG_EVERY:
        raise ValueError(f"--train_steps must be an integer >= {4 * TRAIN_LOG_EVERY}, got {train_steps!r}")
    if not torch.cuda.is_available():
        line, ok = check_setup(train_steps)
        print(line)
        sys.exit(0 if ok else 1)
    records = run_checks(Path(out), float(budget_s), train_steps)
    paths = write_report(records, Path(out))
    failed = [r for r in records if not r["ok"]]
    print(f"gpu-check: {'FAIL' if failed else 'PASS'}: {len(records) - len(failed)}/{len(records)} checks passed; "
          f"report in {paths[0]} and {paths[1]}")
    for record in failed:
        print(f"  failed: {record['phase']} / {record['name']}: {record['detail']}")
    if failed:
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m eval.gpu_check --out=DIR` (what `make gpu-check` runs)."""
    from ddgan.command import run_command

    run_command("gpu-check", gpu_check, argv)


# ---------------------------------------------------------------------------------------------------------
# Without a GPU: check that everything the GPU run needs is there.


def check_setup(train_steps: int = TRAIN_STEPS) -> tuple[str, bool]:
    """One line saying there is no CUDA device and what was checked instead, and whether all of that passed."""
    collected = collect_cuda_tests()
    problems = import_problems() + ([collected] if isinstance(collected, str) else []) + setting_problems()
    if problems:
        return "gpu-check: no CUDA device here, and the GPU run would fail to start: " + "; ".join(problems), False
    presets = {flags["preset"] for _, flags, _ in BENCH_ROWS}
    return (f"gpu-check: no CUDA device here; checked that the 4 phases it would run import and set up (kernel "
            f"build + self-check, {collected} CUDA tests collect, {len(BENCH_ROWS)} benchmark rows on "
            f"{len(presets)} presets, a {train_steps}-step demo training run); nothing written"), True


def import_problems() -> list[str]:
    """What keeps the modules of the GPU run, torch's extension builder among them, from importing."""
    problems = []
    for module in ("ops.upfirdn2d", "ops.bias_act", "ddgan.training.loop"):
        try:
            importlib.import_module(module)
        except Exception as error:  # report every missing piece, not just the first
            problems.append(f"import {module}: {type(error).__name__}: {error}")
    # Finding the build folder imports torch's cpp_extension as the build will. Torch would also log that
    # there is no CUDA runtime here, which this mode's one line says already.
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        custom_ops.default_build_root()
    except Exception as error:
        problems.append(f"the extension's build folder: {type(error).__name__}: {error}")
    finally:
        torch_logger.setLevel(level)
    return problems


def setting_problems() -> list[str]:
    """What is wrong with the benchmark rows' presets and flags, and with the demo training config."""
    problems = []
    for label, flags, _ in BENCH_ROWS:
        try:
            inspect.signature(benchmark.bench).bind(device="cuda", **flags)
            make_config(flags["preset"])
        except (TypeError, ValueError) as error:
            problems.append(f"benchmark row {label!r}: {error}")
    try:
        train_config(Path("unused"))
    except ValueError as error:
        problems.append(f"demo training config: {error}")
    return problems


def collect_cuda_tests() -> int | str:
    """How many tests `pytest --collect-only -q` finds in the CUDA test file, or what went wrong."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", CUDA_TESTS]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    # pytest.ini's -q plus this one print "FILE: N" per file; a single -q would print "N tests collected".
    per_file = re.findall(r"^\S+\.py: (\d+)$", completed.stdout, flags=re.MULTILINE)
    total = re.search(r"(\d+) tests? collected", completed.stdout)
    if completed.returncode != 0 or not (per_file or total):
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-3:]
        return f"`pytest --collect-only -q {CUDA_TESTS}` exited {completed.returncode}: {' | '.join(tail)}"
    return sum(map(int, per_file)) if per_file else int(total.group(1))


# ---------------------------------------------------------------------------------------------------------
# On a GPU: the phases.


def run_checks(out: Path, budget_s: float, train_steps: int) -> list[Record]:
    """Every phase in order, each within its limit and the budget; the records of all checks."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = [environment_record()]
    phases: list[tuple[str, Callable[[list[Record]], None]]] = [
        ("build", build_and_self_check),
        ("cuda_tests", lambda records: records.append(run_cuda_tests(out / "cuda-tests.log"))),
        ("train", lambda records: records.append(train_demo(out, train_steps))),
        ("bench", run_bench_rows),
    ]
    for name, phase in phases:
        left = budget_s - (time.perf_counter() - started)
        records.extend(run_phase(name, phase, min(PHASE_LIMITS_S[name], left)))
    elapsed = time.perf_counter() - started
    records.append(record("total", "time budget", elapsed <= budget_s, elapsed,
                          f"{elapsed:.0f} s of the {budget_s:.0f} s budget"))
    return records


def run_phase(name: str, phase: Callable[[list[Record]], None], limit_s: float) -> list[Record]:
    """Run one phase under its time limit: its own records, then one for the phase (its time, and why it stopped)."""
    if limit_s <= 1:
        return [record(name, "phase", False, 0.0, "not run: the time budget was spent")]
    print(f"gpu-check: {name} (at most {limit_s:.0f} s) ...", flush=True)
    records: list[Record] = []
    started = time.perf_counter()
    problem = None
    try:
        with deadline(limit_s):
            phase(records)
    except PhaseTimeout:
        problem = f"stopped at its {limit_s:.0f} s limit"
    except Exception as error:  # a phase that breaks is a failed check, and the next phase still runs
        problem = f"raised {type(error).__name__}: {shorten(str(error))}"
    seconds = time.perf_counter() - started
    ran = f"{len(records)} check{'' if len(records) == 1 else 's'}, {sum(not r['ok'] for r in records)} failed"
    summary = record(name, "phase", problem is None, seconds, f"{ran}; {problem}" if problem else ran,
                     limit_s=round(limit_s, 1))
    print(f"gpu-check: {name} {'ok' if summary['ok'] else 'FAILED'} in {seconds:.0f} s ({summary['detail']})",
          flush=True)
    return [*records, summary]


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise PhaseTimeout in the main thread `seconds` from now, at the next Python instruction after it."""

    def expire(signum, frame):
        raise PhaseTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def shorten(text: str, limit: int = 400) -> str:
    """text on one line, cut to `limit` characters: a compiler's or CUDA's message can run to pages."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " [...]"


def record(phase: str, name: str, ok: bool, seconds: float, detail: str = "", **extra) -> Record:
    """One check's result as written to gpu-check.jsonl."""
    return {"phase": phase, "name": name, "ok": bool(ok), "seconds": round(seconds, 3), "detail": detail, **extra}


def environment_record() -> Record:
    """The GPU, torch and CUDA this check ran with."""
    properties = torch.cuda.get_device_properties(0)
    detail = (f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, compute capability "
              f"{properties.major}.{properties.minor}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    return record("environment", "device", True, 0.0, detail, device=properties.name, torch=torch.__version__,
                  cuda=torch.version.cuda, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def build_and_self_check(records: list[Record]) -> None:
    """Build the extension (timed), then have each kernel check itself on its first use."""
    from ops.bias_act import bias_act
    from ops.upfirdn2d import setup_filter, upsample2d

    started = time.perf_counter()
    module = custom_ops.build_plugin(verbose=True)
    records.append(record("build", "build ddgan_ops", True, time.perf_counter() - started,
                          f"{module.__name__} from {custom_ops.built_library()}"))
    x, f, b = torch.randn(2, 4, 8, 8, device="cuda"), setup_filter([1, 3, 3, 1], device="cuda"), torch.zeros(4)
    # A process's first convolution loads cuDNN, a one-time cost that is no check's: the networks pay it in
    # their first layers, before any resampling, so pay it here before the checks too.
    upsample2d(x, f, impl="ref")
    torch.cuda.synchronize()
    upsample2d(x, f)
    bias_act(x, b.cuda(), act="silu")
    torch.cuda.synchronize()
    records.extend(self_check_records(custom_ops.self_check_report()))


def self_check_records(report: dict[str, dict]) -> list[Record]:
    """One record per kernel: it must agree with its reference, and its check must cost under a second."""
    records = []
    for op in ("upfirdn2d", "bias_act"):
        result = report.get(op)
        if result is None:
            why = f"{custom_ops.REFERENCE_ENV} is set" if custom_ops.reference_forced() else "the kernel never ran"
            records.append(record("build", f"self-check {op}", False, 0.0, f"not checked: {why}"))
            continue
        ok = result["ok"] and result["seconds"] < SELF_CHECK_LIMIT_S
        detail = (f"{'agrees with' if result['ok'] else 'DISAGREES with'} the reference (max error "
                  f"{result['max_error']:.2g}); the check took {1000 * result['seconds']:.1f} ms "
                  f"(limit {1000 * SELF_CHECK_LIMIT_S:.0f} ms)")
        records.append(record("build", f"self-check {op}", ok, result["seconds"], detail,
                              max_error=result["max_error"]))
    return records


def run_cuda_tests(log_path: Path) -> Record:
    """tests/test_ops_cuda.py in a subprocess: all must pass and none skip (a skip means a kernel went untested)."""
    started = time.perf_counter()
    # Our own options, not pytest.ini's: one -q keeps the counts line, -ra lists what failed or skipped.
    command = [sys.executable, "-m", "pytest", CUDA_TESTS, "-o", "addopts=", "-q", "-ra", "-p", "no:cacheprovider"]
    output, returncode = run_subprocess(command)
    log_path.write_text(output)
    counts = pytest_counts(output)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    ok = returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped") and not failed
    summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "no summary line"
    detail = f"exit {returncode}: {summary}" + (f"; first failures: {', '.join(failed[:5])}" if failed else "")
    return record("cuda_tests", CUDA_TESTS, ok, time.perf_counter() - started, f"{detail} (log: {log_path.name})",
                  counts=counts)


def run_subprocess(command: list[str]) -> tuple[str, int]:
    """Run a command from the repo root; its output and exit code. A timeout kills its whole process group."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate()
    finally:
        if process.poll() is None:  # the phase's deadline struck: no orphaned workers left on the GPU
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return output, process.returncode


def pytest_counts(output: str) -> dict[str, int]:
    """The outcome counts of pytest's last summary line ("3 failed, 290 passed, 1 skipped in 41.2s")."""
    for line in reversed(output.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)\b", line)
        if found and re.search(r"\bin [\d.]+s\b", line):
            return {("error" if outcome.startswith("error") else outcome): int(n) for n, outcome in found}
    return {}


def train_config(out: Path):
    """The demo preset as the GPU training check runs it (the preset's own settings, denser logging)."""
    return make_config("demo", outdir=str(out / "demo-run"), log_every=TRAIN_LOG_EVERY)


def train_demo(out: Path, steps: int) -> Record:
    """Train the demo preset for `steps` iterations on the GPU and judge its logged losses."""
    from ddgan.training.loop import run_training

    started = time.perf_counter()
    run_dir = run_training(train_config(out), max_steps=steps, device="cuda")
    seconds = time.perf_counter() - started
    rows = read_losses(run_dir / "log.jsonl")
    ok, detail = training_healthy(rows)
    return record("train", f"demo preset, {steps} steps", ok, seconds, f"{detail} (run: {run_dir})",
                  loss_D=[row["loss/D"] for row in rows], loss_G=[row["loss/G"] for row in rows],
                  steps=[row["step"] for row in rows])



def run_bench_rows(records: list[Record]) -> None:
    """Each benchmark row through eval.benchmark.bench, compared with its named row where it has one."""
    measured: dict[str, dict] = {}
    for label, flags, compared_with in BENCH_ROWS:
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # bench prints its table; the report has it all
                (result,) = benchmark.bench(device="cuda", **{"repeats": 10, "warmup": 3, **flags})
        except Exception as error:
            records.append(record("bench", label, False, time.perf_counter() - started,
                                  f"raised {type(error).__name__}: {shorten(str(error))}"))
            continue
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        measured[label] = result
        records.append(bench_record(label, result, measured.get(compared_with), compared_with,
                                    time.perf_counter() - started))


def bench_record(label: str, result: dict, baseline: dict | None, baseline_label: str | None,
                 seconds: float) -> Record:
    """A benchmark row's record: its measurements, and its throughput over its comparison row's."""
    speedup = result["images_per_s"] / baseline["images_per_s"] if baseline else None
    rate = (f"{result['iters_per_s']:.2f} it/s" if result.get("iters_per_s") else
            f"{result['images_per_s']:.0f} images/s")
    detail = f"{result['ms_median']:.1f} ms per call, {rate}" + (f", {speedup:.2f}x {baseline_label}" if speedup
                                                                  else "")
    return record("bench", label, True, seconds, detail, speedup=speedup, compared_with=baseline_label if baseline
                  else None, **{k: result.get(k) for k in BENCH_KEYS})


# ---------------------------------------------------------------------------------------------------------
# The report.



if __name__ == "__main__":
    main()
