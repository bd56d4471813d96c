"""eval.gpu_check without a GPU: the one-line CPU mode CI runs, the loss criterion and the report writer."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval import gpu_check, gpu_report

REPO = Path(__file__).resolve().parents[1]

# loss/D and loss/G logged every 5 steps (steps 1, 6, ..., 196) by 200 CPU iterations of the demo preset,
# seeds 0 and 1 (torch 2.14.1, `run_training(make_config("demo", log_every=5, seed=s), max_steps=200)`).
# Neither falls: D starts at 2 ln 2 and swings around it (seed 0 spikes to 8.1 at its first lazy R1 step).
CPU_SEED0 = (
    [1.386, 1.117, 1.24, 1.285, 1.442, 1.398, 1.352, 1.363, 1.338, 8.086, 1.384, 1.33, 1.358, 1.271, 1.289,
     1.374, 1.291, 1.373, 1.059, 2.557, 1.357, 1.447, 1.378, 1.413, 1.406, 1.4, 1.377, 1.389, 1.341, 1.402,
     1.417, 1.393, 1.379, 1.346, 1.512, 1.318, 1.326, 1.371, 1.436, 1.321],
    [0.728, 0.69, 0.816, 0.508, 1.114, 0.675, 0.723, 0.744, 0.719, 1.008, 0.598, 0.739, 0.782, 0.846, 1.014,
     0.71, 0.748, 0.757, 1.049, 1.255, 0.694, 0.755, 0.689, 0.71, 0.695, 0.668, 0.678, 0.692, 0.745, 0.686,
     0.691, 0.713, 0.691, 0.78, 0.758, 0.779, 0.827, 0.77, 0.679, 0.789],
)
CPU_SEED1 = (
    [1.386, 1.468, 1.333, 1.348, 1.382, 1.37, 1.334, 1.371, 1.293, 1.383, 1.268, 1.422, 1.708, 1.324, 1.424,
     1.406, 1.398, 1.392, 1.374, 1.395, 1.388, 1.388, 1.381, 1.396, 1.473, 1.358, 1.409, 1.404, 1.388, 1.366,
     1.409, 1.413, 1.381, 1.394, 1.384, 1.491, 1.38, 1.41, 1.395, 1.381],
    [0.7, 0.698, 0.724, 1.122, 0.668, 0.696, 0.355, 0.788, 0.705, 0.767, 0.784, 0.745, 0.837, 0.686, 0.69,
     0.72, 0.645, 0.69, 0.736, 0.696, 0.68, 0.727, 0.708, 0.765, 0.615, 0.73, 0.609, 0.683, 0.75, 0.706,
     2.19, 0.797, 0.706, 0.702, 0.696, 0.638, 0.707, 0.694, 0.697, 0.707],
)


def rows(d_losses, g_losses, every=5):
    pairs = enumerate(zip(d_losses, g_losses, strict=True))
    return [{"step": 1 + every * i, "loss/D": d, "loss/G": g} for i, (d, g) in pairs]


def test_cpu_mode_prints_one_line_and_exits_0(tmp_path):
    """What CI's `make gpu-check` runs: no GPU, one line, exit 0, and nothing written."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-m", "eval.gpu_check", f"--out={tmp_path / 'out'}"], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device here; checked that the 4 phases")
    assert " CUDA tests collect" in lines[0] and f"{len(gpu_check.BENCH_ROWS)} benchmark rows" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cpu_mode_names_what_would_fail(monkeypatch):
    monkeypatch.setattr(gpu_check, "collect_cuda_tests", lambda: "`pytest --collect-only` exited 2: ImportError")
    monkeypatch.setattr(gpu_check, "BENCH_ROWS", (("x", {"preset": "cifar11"}, None),
                                                  ("y", {"preset": "cifar10", "bach": 8}, None)))
    line, ok = gpu_check.check_setup()
    assert not ok and "\n" not in line
    assert "exited 2: ImportError" in line and "row 'x': unknown --preset 'cifar11'" in line
    assert "row 'y': got an unexpected keyword argument 'bach'" in line


def test_bad_flags_are_named():
    with pytest.raises(ValueError, match="--train_steps"):
        gpu_check.gpu_check(train_steps=3)
    with pytest.raises(ValueError, match="--budget_s"):
        gpu_check.gpu_check(budget_s=0)


# ---------------------------------------------------------------------------------------------------------
# The loss criterion.


@pytest.mark.parametrize("log", [CPU_SEED0, CPU_SEED1], ids=["seed0", "seed1"])
def test_cpu_runs_are_healthy(log):
    ok, detail = gpu_check.training_healthy(rows(*log))
    assert ok, detail
    assert detail.startswith("40 points, all finite; D starts at 1.386")


def test_the_log_file_is_read_as_the_loop_writes_it(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"message": "run folder ..."}]
    lines += [{"kimg": 0.016 * r["step"], "step": r["step"], "loss/D": r["loss/D"], "loss/r1": 0.1,
               "loss/G": r["loss/G"]} for r in rows(*CPU_SEED1)]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    read = gpu_check.read_losses(log)
    assert read == rows(*CPU_SEED1)
    assert gpu_check.training_healthy(read)[0]


def test_a_nan_anywhere_fails():
    d, g = list(CPU_SEED0[0]), list(CPU_SEED0[1])
    g[12] = float("nan")
    ok, detail = gpu_check.training_healthy(rows(d, g))
    assert not ok and detail == "1 non-finite losses, the first loss/G at step 61"


def test_a_frozen_discriminator_fails():
    """Broken D gradients leave its logits at 0: its loss sits at 2 ln 2 while G's sits at ln 2."""
    frozen = rows([2 * math.log(2) + 0.001 * (-1) ** i for i in range(40)], [math.log(2)] * 40)
    ok, detail = gpu_check.training_healthy(frozen)
    assert not ok and "does not learn" in detail


def test_a_won_game_fails():
    """D seeing through G: its loss heads to 0 and G's climbs."""
    d, g = list(CPU_SEED0[0]), list(CPU_SEED0[1])
    d[30:] = [0.2] * 10
    g[30:] = [3.0] * 10
    ok, detail = gpu_check.training_healthy(rows(d, g))
    assert not ok and "D's last-quarter median 0.200" in detail and "G's last-quarter median 3.000" in detail


def test_a_wrong_start_and_too_few_points_fail():
    d, g = list(CPU_SEED1[0]), list(CPU_SEED1[1])
    d[0] = 3.5  # D's logits far from 0 at the start: the networks differ from the CPU's
    ok, detail = gpu_check.training_healthy(rows(d, g))
    assert not ok and "D starts at 3.500" in detail
    assert gpu_check.training_healthy(rows(d[:3], g[:3])) == (
        False, "only 3 logged points with loss/D and loss/G; need at least 4")


# ---------------------------------------------------------------------------------------------------------
# The report.


def fake_records():
    r = gpu_check.record
    bench = dict(what="sample", preset="cifar10", batch=100, ms_median=12.5, images_per_s=8000.0, iters_per_s=None,
                 peak_mem_mb=2048.0, dtype="bfloat16", flops_per_image=5.64e10, tflops=451.2, ceiling_tflops=752.0,
                 ceiling_matmul_tflops=752.0, ceiling_conv_tflops=601.5, percent_of_ceiling=60.0)
    return [
        r("environment", "device", True, 0.0, "NVIDIA H200, 140 GiB, compute capability 9.0; torch 2.14.1",
          date="2026-12-01 10:00:00 UTC"),
        r("build", "build ddgan_ops", True, 95.2, "ddgan_ops_abc from /x/ddgan_ops_abc.so"),
        *gpu_check.self_check_records({"upfirdn2d": {"ok": True, "seconds": 0.004, "max_error": 3e-7},
                                       "bias_act": {"ok": False, "seconds": 0.002, "max_error": float("inf")}}),
        r("build", "phase", False, 97.0, "3 checks, 1 failed", limit_s=240.0),
        r("cuda_tests", "tests/test_ops_cuda.py", False, 40.0, "exit 1: 1 failed, 311 passed | see log",
          counts={"failed": 1, "passed": 311}),
        r("train", "demo preset, 200 steps", True, 20.0, "40 points", loss_D=[1.386, float("nan")]),
        r("bench", "cifar10 sample 100, bf16", True, 9.0, "12.5 ms", speedup=2.5, compared_with="fp32 eager",
          **bench),
        r("bench", "cifar10 sample 100, bf16 + compile + CUDA graph", False, 80.0, "raised RuntimeError: boom"),
        r("total", "time budget", True, 300.0, "300 s of the 480 s budget"),
    ]


def test_report_files(tmp_path):
    markdown, jsonl = gpu_report.write_report(fake_records(), tmp_path / "out")
    assert (markdown.name, jsonl.name) == ("gpu-check.md", "gpu-check.jsonl")
    entries = [json.loads(line) for line in jsonl.read_text().splitlines()]  # strict JSON: no NaN or Infinity
    assert [e["name"] for e in entries] == [r["name"] for r in fake_records()]
    assert entries[3]["max_error"] == "inf" and entries[6]["loss_D"] == [1.386, "nan"]
    text = markdown.read_text()
    assert text.startswith("# GPU check: FAIL\n\nNVIDIA H200, 140 GiB, compute capability 9.0; torch 2.14.1; "
                           "2026-12-01 10:00:00 UTC. 6 of 10 checks passed.")
    assert "| build | **NO** | 97.0 | 240 | 3 checks, 1 failed |" in text
    assert "| build | self-check bias_act | **NO** | 0.00 | DISAGREES with the reference (max error inf)" in text
    assert "| build | self-check upfirdn2d | yes | 0.00 | agrees with the reference (max error 3e-07); the check " \
           "took 4.0 ms (limit 1000 ms) |" in text
    assert "exit 1: 1 failed, 311 passed \\| see log" in text  # a | in a cell does not split it
    assert "| cifar10 sample 100, bf16 | 12.5 | 8000 |  | 2048 | 2.50x | fp32 eager |" in text
    assert "| cifar10 sample 100, bf16 | bfloat16 | 56.4 | 8000 | 451.2 | 752 (752, 601.5) | 60.0% |" in text
    assert text.count("raised RuntimeError") == 1  # listed among the checks, not among the measurements
    gpu_report.write_report(fake_records()[:2], tmp_path / "out")
    assert len(jsonl.read_text().splitlines()) == 2 and "PASS" in markdown.read_text()  # replaced, not appended


@pytest.mark.usefixtures("quick_ceilings")
def test_bench_rows_carry_their_roofline_into_the_report(monkeypatch):
    """The bench phase's code path on the CPU: real (tiny) rows through bench_record into both reports."""
    bench = gpu_check.benchmark.bench

    def on_the_cpu(device, **flags):
        return bench(device="cpu", **{**flags, "width": 8, "batch": 2, "repeats": 1, "warmup": 0})

    monkeypatch.setattr(gpu_check.benchmark, "bench", on_the_cpu)
    monkeypatch.setattr(gpu_check, "BENCH_ROWS", (("demo sample", dict(what="sample", preset="demo", amp="none"), None),
                                                  ("demo train", dict(what="train", preset="demo", amp="none"), None)))
    records = []
    gpu_check.run_bench_rows(records)
    assert [r["name"] for r in records] == ["demo sample", "demo train"] and all(r["ok"] for r in records)
    for r in records:
        assert r["flops_per_image"] > 0 and r["tflops"] > 0 and r["percent_of_ceiling"] > 0
        assert r["ceiling_tflops"] == max(r["ceiling_matmul_tflops"], r["ceiling_conv_tflops"])
    text = gpu_report.markdown_report(records)
    roofline = text[text.index("## Roofline"):].splitlines()
    assert roofline[4].startswith("| row | dtype | GFLOP/image | images/s | TFLOP/s | ceiling TFLOP/s (matmul, conv) |")
    sample = records[0]
    assert roofline[6] == (f"| demo sample | float32 | {sample['flops_per_image'] / 1e9:.4g} | "
                           f"{gpu_report._cell(sample['images_per_s'])} | {gpu_report._cell(sample['tflops'])} | "
                           f"{gpu_report._cell(sample['ceiling_tflops'])} "
                           f"({gpu_report._cell(sample['ceiling_matmul_tflops'])}, "
                           f"{gpu_report._cell(sample['ceiling_conv_tflops'])}) | "
                           f"{sample['percent_of_ceiling']:.1f}% |")


def test_pytest_counts():
    output = "....F\nFAILED tests/x.py::t - boom\n= 1 failed, 311 passed, 2 skipped, 1 error in 41.20s =\n"
    assert gpu_check.pytest_counts(output) == {"failed": 1, "passed": 311, "skipped": 2, "error": 1}
    assert gpu_check.pytest_counts("312 passed in 3.1s") == {"passed": 312}
    assert gpu_check.pytest_counts("Traceback ...\nImportError: no\n") == {}


def test_a_phase_that_overruns_or_raises_is_a_failed_check():
    def slow(records):
        records.append(gpu_check.record("x", "first", True, 0.1))
        while True:
            pass

    records = gpu_check.run_phase("x", slow, 1.2)
    assert [r["name"] for r in records] == ["first", "phase"]
    assert not records[-1]["ok"] and records[-1]["detail"] == "1 check, 0 failed; stopped at its 1 s limit"
    records = gpu_check.run_phase("y", lambda records: 1 / 0, 10)
    assert not records[-1]["ok"]
    assert records[-1]["detail"] == "0 checks, 0 failed; raised ZeroDivisionError: division by zero"

    def build_error(records):
        raise RuntimeError("Error building extension:\n" + "nvcc output\n" * 500)

    (summary,) = gpu_check.run_phase("z", build_error, 10)
    assert len(summary["detail"]) < 500 and summary["detail"].endswith("[...]") and "\n" not in summary["detail"]
    assert gpu_check.run_phase("z", pytest.fail, 0.5) == [
        gpu_check.record("z", "phase", False, 0.0, "not run: the time budget was spent")]
