"""`ddgan bench` on a tiny generator on the CPU: sane numbers, the JSON keys, and bad flags."""

import json

import pytest

from eval import benchmark

pytestmark = pytest.mark.usefixtures("quick_ceilings")

ROOFLINE = {"flops_per_image", "tflops", "ceiling_tflops", "percent_of_ceiling", "ceiling_matmul_tflops",
            "ceiling_conv_tflops", "ceiling_conv"}
KEYS = {"what", "preset", "device", "device_type", "torch", "dtype", "channels_last", "compile", "cuda_graph",
        "width", "repeats", "warmup", "batch", "T", "images_per_s", "ms_median", "ms_mean", "peak_mem_mb", *ROOFLINE}


def assert_roofline(record):
    """The row's roofline columns are there and sane (no timing thresholds)."""
    assert ROOFLINE <= set(record)
    assert record["flops_per_image"] > 0 and record["tflops"] > 0 and 0 < record["percent_of_ceiling"]
    assert record["tflops"] == pytest.approx(record["flops_per_image"] * record["images_per_s"] / 1e12)
    assert record["ceiling_tflops"] == max(record["ceiling_matmul_tflops"], record["ceiling_conv_tflops"])


def test_sample_benchmark_numbers_and_json(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    out.write_text('{"earlier": 1}\n')
    records = benchmark.bench(preset="demo", what="sample", device="cpu", batch=2, width=8, repeats=2, warmup=1,
                              json_out=str(out))
    (record,) = records
    assert KEYS <= set(record)
    assert record["what"] == "sample" and record["device_type"] == "cpu" and record["dtype"] == "float32"
    assert record["batch"] == 2 and record["T"] == 2 and record["width"] == 8 and record["channels_last"] is False
    assert 0 < record["ms_median"] < 60_000 and record["peak_mem_mb"] > 10
    # throughput is over all repeats: batch / mean time
    assert record["images_per_s"] == pytest.approx(2000 / record["ms_mean"], rel=1e-6)
    assert_roofline(record)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:3] == ["what", "preset", "batch"]
    assert printed[0].split()[-4:] == ["flops_per_image", "tflops", "ceiling_tflops", "percent_of_ceiling"]
    assert json.loads(printed[-1]) == record
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1]) == record  # appended, not overwritten


def test_train_benchmark():
    (record,) = benchmark.bench(preset="demo", what="train", device="cpu", batch=2, width=8, repeats=1, warmup=0)
    assert record["what"] == "train" and record["batch"] == 2
    assert record["iters_per_s"] > 0 and record["images_per_s"] == pytest.approx(2 * record["iters_per_s"])
    assert_roofline(record)
    # an iteration's forward + backward of G and D per image, against T generator forwards for sampling
    (sample,) = benchmark.bench(preset="demo", what="sample", device="cpu", batch=2, width=8, repeats=1, warmup=0)
    assert record["flops_per_image"] > 3 * sample["flops_per_image"] / sample["T"]


def test_ops_rows_get_the_common_fields(monkeypatch, capsys):
    from eval import ops_timing

    def fake(device, repeats, warmup):
        return [{"op": "upsample2d", "shape": [8, 64, 32, 32], "device": str(device), "repeats": repeats,
                 "ref_ms": 1.5, "flops_per_call": 3_000_000}]

    monkeypatch.setattr(ops_timing, "bench_ops", fake)
    (record,) = benchmark.bench(what="ops", device="cpu", repeats=2)
    assert record["op"] == "upsample2d" and record["ref_ms"] == 1.5 and record["repeats"] == 2
    assert record["device_type"] == "cpu" and record["device"] != "cpu" and record["torch"]
    assert record["tflops"] == pytest.approx(0.002)  # 3 MFLOP in 1.5 ms
    assert record["ceiling_tflops"] == record["ceiling_matmul_tflops"] > 0 and record["ceiling_conv"] is None
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:4] == ["op", "shape", "ref_ms", "flops_per_call"] and "1.5" in row
    assert "percent_of_ceiling" in header


def test_ops_count_their_reference_flops():
    from eval import ops_timing

    up, down, act = ops_timing.bench_ops("cpu", repeats=1, warmup=0, shapes=[(1, 2, 4, 4)])
    # upsample: each input pixel of each channel meets the 16 taps of the 4x4 FIR once (a transposed
    # depthwise conv skips the inserted zeros), in the forward and again in the input's gradient
    assert up["flops_per_call"] == 2 * (2 * 2 * 16 * 4 * 4)
    assert down["flops_per_call"] > 0 and act["flops_per_call"] == 0  # bias_act is elementwise: torch counts 0


@pytest.mark.parametrize("flags, words", [
    (dict(what="speed"), "--what must be one of"),
    (dict(repeats=0), "--repeats must be an integer >= 1"),
    (dict(batch=0), "--batch must be"),
    (dict(width=0), "--width must be a positive integer"),
    (dict(amp="fp8"), "--amp must be"),
    (dict(cuda_graph=True), "--cuda_graph applies"),
    (dict(preset="imagenet"), "unknown --preset"),
])
def test_bad_flags(flags, words):
    with pytest.raises(ValueError, match=words):
        benchmark.bench(**{"device": "cpu", "preset": "demo", **flags})


def test_command_prints_only_its_own_lines(capsys):
    benchmark.main(["--preset=demo", "--device=cpu", "--batch=1", "--width=8", "--repeats=1", "--warmup=0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["batch"] == 1  # header, row, one JSON line


def test_original_baseline_has_equal_numerics():
    import torch

    from eval.baseline import original_resampling, single_channel_upfirdn2d
    from ops import upfirdn2d as ours

    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    f = ours.setup_filter([1, 3, 3, 1]).double()
    for kwargs in (dict(up=2, padding=(2, 1, 2, 1)), dict(down=2, padding=1), dict(up=1, padding=(-1, 2, 0, 1))):
        want = ours.upfirdn2d(x, f, impl="ref", **kwargs)
        with original_resampling():
            got = ours.upfirdn2d(x, f, impl="ref", **kwargs)
        torch.testing.assert_close(got, want)
    with original_resampling():
        assert ours._upfirdn2d_ref is single_channel_upfirdn2d
    assert ours._upfirdn2d_ref is not single_channel_upfirdn2d


def test_original_adaptive_group_norm_is_eager_with_equal_numerics(monkeypatch):
    import torch

    from eval.baseline import original_ops
    from ops import adaptive_group_norm as op

    x, gamma, beta, bias = torch.randn(2, 8, 5, 5), torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        want = op.adaptive_group_norm(x, 2, gamma, beta, bias, act="silu")
        monkeypatch.setattr(op, "_adaptive_group_norm_cpu", lambda *args: pytest.fail("the kernel ran"))
        with original_ops():
            got = op.adaptive_group_norm(x, 2, gamma, beta, bias, act="silu")
    torch.testing.assert_close(got, want)
    assert op._kernel_applies(x, gamma, beta, bias, "cpu") == (op.cpu_library.get_library() is not None)


@pytest.mark.parametrize("baseline", ["original", "original_resampling"])
def test_bench_with_original_baseline_runs(baseline):
    from eval.benchmark import bench

    (record,) = bench(preset="demo", what="train", device="cpu", batch=2, repeats=1, warmup=0, width=8,
                      baseline=baseline)
    assert record["baseline"] == baseline and record["iters_per_s"] > 0


def test_original_iteration_ends_in_our_iterations_state():
    """The baseline does the original's extra work, not other maths: the same state after an R1 and a plain step."""
    import torch

    from ddgan.config import make_config
    from ddgan.training.trainer import Trainer
    from eval.baseline import run_original_iteration
    from tests.helpers import TINY

    config = make_config("demo", **TINY, image_size=8, ch_mult=[1, 2], batch_size=4, lazy_reg=2, r1_gamma=1.0,
                         channels_last=False)
    x0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours, original, initial = (jittered(Trainer(config)) for _ in range(3))
    for _ in range(2):
        ours.run_iteration(x0)
        run_original_iteration(original, x0)
    assert original.step == ours.step == 2 and original.images_seen == ours.images_seen == 8
    for name in ("G", "D", "G_ema"):
        want, got = getattr(ours, name).state_dict(), getattr(original, name).state_dict()
        start = getattr(initial, name).state_dict()
        assert any(not torch.equal(want[key], start[key]) for key in want)  # the steps did move the weights
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
    for opt in ("opt_G", "opt_D"):
        assert [g["fused"] for g in getattr(original, opt).param_groups] == [True]  # restored after each step


def jittered(trainer):
    """The trainer with the same random offsets on every weight of G and D (G_ema copied from G).

    The zero-initialised layers give D gradients that are exactly zero in exact arithmetic and +-1e-8 in
    floats, depending on the order of the sums; Adam's first step turns their sign into a full step of lr.
    """
    import torch

    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for net in (trainer.G, trainer.D):
            for param in net.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        trainer.G_ema.load_state_dict(trainer.G.state_dict())
    return trainer


def test_baseline_is_a_cpu_comparison():
    from eval.benchmark import bench

    with pytest.raises(ValueError, match="--baseline must be one of original, original_resampling"):
        bench(preset="demo", what="train", device="cpu", baseline="nvlabs")
    with pytest.raises(ValueError, match="--device=cpu"):
        bench(preset="demo", what="train", device="meta", baseline="original")


def test_train_vs_original_alternates_and_reports_the_speedup():
    from eval.benchmark import bench

    ours, original = bench(preset="demo", what="train_vs_original", device="cpu", batch=2, repeats=2, warmup=0,
                           width=8, channels_last=True)
    assert ours["baseline"] is None and ours["channels_last"] is True
    assert original["baseline"] == "original" and original["channels_last"] is False
    assert ours["speedup_vs_original"] == pytest.approx(original["ms_median"] / ours["ms_median"])
    assert "speedup_vs_original" not in original
    for record in (ours, original):
        assert_roofline(record)
    # the original backpropagates D's fake loss into G as well: more work per image
    assert original["flops_per_image"] > ours["flops_per_image"]
    with pytest.raises(ValueError, match="--device=cpu"):
        bench(preset="demo", what="train_vs_original", device="meta")


def test_sample_vs_original_alternates_and_reports_the_speedup():
    from eval.benchmark import bench

    ours, original = bench(preset="demo", what="sample_vs_original", device="cpu", batch=2, repeats=2, warmup=0,
                           width=8, amp="bf16")
    assert ours["baseline"] is None and ours["dtype"] == "bfloat16" and ours["channels_last"] is True
    assert original["baseline"] == "original" and original["dtype"] == "float32" and not original["channels_last"]
    assert ours["speedup_vs_original"] == pytest.approx(original["ms_median"] / ours["ms_median"])
    assert ours["T"] == original["T"] == 2
    for record in (ours, original):
        assert_roofline(record)
    assert ours["ceiling_matmul_tflops"] != original["ceiling_matmul_tflops"]  # a bf16 and a float32 ceiling
    with pytest.raises(ValueError, match="--what=sample_vs_original are the original's CPU path"):
        bench(preset="demo", what="sample_vs_original", device="meta")


@pytest.mark.parametrize("preset, expected", [("cifar10", 32), ("demo", 16)])
def test_train_vs_original_default_batch_fits_a_cpu(monkeypatch, preset, expected):
    """The preset's batch, at most 32: CIFAR-10's 256 with the original's iteration beside ours needs > 24 GiB."""
    from eval import benchmark

    class Stop(Exception):
        pass

    def stop(config, device, batch, *args, **kwargs):
        raise Stop(batch)

    monkeypatch.setattr(benchmark, "train_work", stop)
    with pytest.raises(Stop) as stopped:
        benchmark.bench(preset=preset, what="train_vs_original", device="cpu", amp="none")
    assert stopped.value.args == (expected,)
