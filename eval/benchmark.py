"""`ddgan bench`: how fast sampling, a training iteration, or the custom ops run on this machine.

Every measurement warms up first, synchronises the device around each timed repeat, and reports the
median time per call together with the throughput over all repeats. Each one is printed in a table
and as a JSON line (device, torch version, dtype and options included); `--json_out` appends the
JSON lines to a file so that runs on different machines can be compared.

Every sampling and training row also carries its roofline (eval.roofline): `flops_per_image` as
torch's FlopCounterMode counts the row's work once (see sample_work and train_work for what is
counted), the `tflops` achieved (flops_per_image * images_per_s), and `percent_of_ceiling` of a
`ceiling_tflops` measured after the timing in the same process on the same device and dtype: the
higher of a large matrix product's rate (`ceiling_matmul_tflops`) and that of the network's most
expensive 3x3 convolution at the row's batch and layout (`ceiling_conv_tflops`, shape in `ceiling_conv`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval/benchmark.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ddgan.command import prints_its_result
from ddgan.config import Config, make_config
from ddgan.models import build_generator
from ddgan.models.space import space_for
from ddgan.runtime import precision
from ddgan.runtime.distributed import Context, default_device
from ddgan.training.trainer import Trainer
from eval import ops_timing, roofline
from eval.baseline import original_ops, original_resampling, run_original_iteration
from eval.timing import (
    alternated,
    device_name,
    original_sampling_pass,
    peak_memory_mb,
    sample_timings,
    sampling_pass,
    time_calls,
)

WHAT = ("sample", "train", "ops", "train_vs_original", "sample_vs_original")
DEFAULT_SAMPLE_BATCH = 100
# train_vs_original runs the original's float32 iteration beside ours in one process: at CIFAR-10's batch of
# 256 that does not fit 24 GiB (killed at 24.4 GB) and takes minutes an iteration on a 2-core CPU.
DEFAULT_TRAIN_VS_ORIGINAL_BATCH = 32
BASELINES = (None, "original", "original_resampling")
BACKENDS = ("pytorch", "onnxruntime")
TABLE_COLUMNS = ("what", "preset", "batch", "T", "dtype", "baseline", "backend", "ms_median", "images_per_s",
                 "iters_per_s", "peak_mem_mb", "speedup_vs_original", "flops_per_image", "tflops", "ceiling_tflops",
                 "percent_of_ceiling")
# The FLOPs of a row are counted at this batch (or the row's, if smaller) and scaled to the row's batch:
# every op torch counts (convolution, matrix product, attention) does the same work for each image.
FLOP_COUNT_BATCH = 2



def bench_config(preset: str, width: int | None, **overrides) -> Config:
    """The preset's config, optionally with a narrower generator (num_channels_dae = width)."""
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"--width must be a positive integer (the generator's num_channels_dae), got {width!r}")
        overrides["num_channels_dae"] = width
    return space_for(make_config(preset, **overrides)).config  # a latent space's shape comes from its autoencoder



def bench_sample(config: Config, device: torch.device, batch: int, amp_dtype, channels_last: bool, compile: bool,
                 cuda_graph: bool, repeats: int, warmup: int) -> dict:
    """Timings of sampling passes (see sampling_pass)."""
    run = sampling_pass(config, device, batch, amp_dtype, channels_last, compile, cuda_graph)
    times = time_calls(run, device, repeats, warmup)
    return {**sample_timings(times, batch, config), "peak_mem_mb": peak_memory_mb(device)}



def bench_sample_vs_original(config: Config, batch: int, amp_dtype, channels_last: bool, repeats: int,
                             warmup: int, compile: bool = False) -> list[dict]:
    """Our sampling pass and the original's (float32, NCHW, its resampling), alternated (CPU)."""
    device = torch.device("cpu")
    ours = sampling_pass(config, device, batch, amp_dtype, channels_last, compile)
    times = alternated({"ours": ours, "original": original_sampling_pass(config, batch)}, repeats, warmup)
    speedup = statistics.median(times["original"]) / statistics.median(times["ours"])
    return [{"baseline": None, "channels_last": channels_last, "dtype": str(amp_dtype or torch.float32).removeprefix(
                "torch."), **sample_timings(times["ours"], batch, config), "speedup_vs_original": speedup},
            {"baseline": "original", "channels_last": False, "dtype": "float32", "compile": False,
             **sample_timings(times["original"], batch, config)}]


def bench_train(config: Config, device: torch.device, batch: int, repeats: int, warmup: int,
                original_work: bool = False) -> dict:
    """Full training iterations (D step with lazy R1, G step, EMA) on a synthetic batch in [-1, 1]."""
    trainer = Trainer(config, Context(device=device))
    x0 = synthetic_batch(config, batch, device)
    if original_work:
        step = functools.partial(run_original_iteration, trainer)
    else:  # as the training loop runs it: the finiteness checks sync the host on CUDA only when logging
        step = functools.partial(trainer.run_iteration, check_finite=device.type == "cpu")
    times = time_calls(lambda: step(x0), device, repeats, warmup)
    return {**train_timings(times, batch, config), "peak_mem_mb": peak_memory_mb(device)}


def synthetic_batch(config: Config, batch: int, device: torch.device) -> torch.Tensor:
    """A fixed random data batch in [-1, 1] of what the trainer takes: images, or a latent space's posteriors."""
    shape = (batch, *space_for(config).item_shape)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)).mul(2).sub(1).to(device)


def train_timings(times: Sequence[float], batch: int, config: Config) -> dict:
    """Throughput and per-iteration times of timed training iterations (seconds each)."""
    # The mean includes the R1 penalty every lazy_reg steps; the median mostly misses it.
    return {"images_per_s": batch * len(times) / sum(times), "iters_per_s": len(times) / sum(times),
            "ms_median": 1000 * statistics.median(times), "ms_mean": 1000 * statistics.fmean(times),
            "T": config.num_timesteps}


def bench_train_vs_original(config: Config, batch: int, repeats: int, warmup: int) -> list[dict]:
    """Our iteration and the original's (fp32, NCHW, its resampling), alternated so both meet the same machine."""
    device = torch.device("cpu")
    ours = Trainer(config, Context(device=device))
    original = Trainer(original_config(config), Context(device=device))
    x0 = synthetic_batch(config, batch, device)

    def original_iteration():
        with original_ops():
            run_original_iteration(original, x0)

    times = alternated({"ours": lambda: ours.run_iteration(x0), "original": original_iteration}, repeats, warmup)
    speedup = statistics.median(times["original"]) / statistics.median(times["ours"])
    return [{"baseline": None if name == "ours" else "original", "channels_last": trainer.channels_last,
             "dtype": str(trainer.amp_dtype or torch.float32).removeprefix("torch."),
             **train_timings(t, batch, config), **({"speedup_vs_original": speedup} if name == "ours" else {})}
            for (name, t), trainer in zip(times.items(), (ours, original), strict=True)]


def original_config(config: Config) -> Config:
    """The config of the original's iteration beside ours: float32, NCHW."""
    return dataclasses.replace(config, channels_last=False, amp="none")


@dataclasses.dataclass(frozen=True)
class Work:
    """A row's work per image (FLOPs as eval.roofline.count_flops counts them) and its typical convolution
    at the row's batch (the shape of the conv ceiling)."""

    flops_per_image: float
    conv: roofline.ConvShape | None


def counted_work(flops: float, counted_batch: int, batch: int, convs: list[roofline.ConvShape]) -> Work:
    """The work of a count made at counted_batch, per image, with its typical conv scaled to the row's batch."""
    conv = roofline.typical_conv(convs)
    scaled = None if conv is None else conv.with_batch(conv.input[0] * batch // counted_batch)
    return Work(flops / counted_batch, scaled)


def sample_work(config: Config, device: torch.device, batch: int, amp_dtype, channels_last: bool) -> Work:
    """Forward FLOPs per image of a sampling pass: T generator calls, and the decoder of a latent space.

    Counted on one eager pass (no torch.compile, no CUDA graph: the same arithmetic) at a batch of
    min(batch, FLOP_COUNT_BATCH), under whatever resampling is in force (the original's inserts zeros
    and so counts more); the typical conv is the pass's most expensive 3x3 one (the generator's).
    """
    counted_batch = min(batch, FLOP_COUNT_BATCH)
    convs: list[roofline.ConvShape] = []
    flops = roofline.count_flops(sampling_pass(config, device, counted_batch, amp_dtype, channels_last), convs)
    return counted_work(flops, counted_batch, batch, convs)


def train_work(config: Config, device: torch.device, batch: int, timed_steps: range,
               original_work: bool = False) -> Work:
    """Forward + backward FLOPs per image of the timed training iterations (steps `timed_steps`).

    An iteration's count is everything its matrix products and convolutions do: the D step's G forward
    for the fake pairs, D's forward on the real and fake pairs and its backward; on an R1 step also the
    gradient at the real x_t (a backward with create_graph) and the backward through that gradient (the
    double backward); the G step's G forward, D forward and backward through both. The original's
    iteration (original_work) also backpropagates the D step's fake loss into G, and its resampling counts
    its inserted zeros. Optimizer steps, the EMA and elementwise ops count zero. One iteration of each
    kind among the timed steps (with R1, every lazy_reg steps, and without) is counted on an eager copy of
    the trainer (compile off) at a batch of min(batch, FLOP_COUNT_BATCH), and the kinds are averaged over
    the timed steps as they came: images_per_s is over all timed iterations too. The typical conv is the
    most expensive 3x3 one of G or D in the iteration's forward passes.
    """
    counting = Trainer(dataclasses.replace(config, compile=False), Context(device=device))
    counted_batch = min(batch, FLOP_COUNT_BATCH)
    x0 = synthetic_batch(config, counted_batch, device)
    iterate = functools.partial(run_original_iteration, counting) if original_work else counting.run_iteration
    r1_steps = {}  # step -> whether its D step adds R1, by the trainer's own rule
    for step in timed_steps:
        counting.step = step
        r1_steps[step] = counting.r1_due()
    flops_by_kind: dict[bool, int] = {}
    convs: list[roofline.ConvShape] = []
    for step, r1 in r1_steps.items():
        if r1 not in flops_by_kind:
            counting.step = step
            flops_by_kind[r1] = roofline.count_flops(lambda: iterate(x0), convs)
    flops = statistics.fmean(flops_by_kind[r1] for r1 in r1_steps.values())
    return counted_work(flops, counted_batch, batch, convs)


def measure_ceilings_first(device: torch.device, rows: Sequence[tuple[torch.dtype | None, Work, bool]]) -> None:
    """The ceilings of rows (dtype, work, channels_last) measured before their timings (see roofline.ceilings)."""
    for dtype, work, channels_last in rows:
        roofline.ceilings(device, dtype or torch.float32, work.conv, channels_last)


def with_roofline(record: dict, work: Work, device: torch.device) -> dict:
    """The record with its roofline columns, against ceilings in its dtype and layout on this device."""
    dtype = getattr(torch, record["dtype"])
    ceilings = roofline.ceilings(device, dtype, work.conv, record["channels_last"], after_timing=True)
    return {**record, "flops_per_image": work.flops_per_image,
            **roofline.roofline_fields(work.flops_per_image, record["images_per_s"], ceilings)}


def bench_ops_rows(device: torch.device, repeats: int, warmup: int) -> list[dict]:
    """The custom ops' measurements from eval.ops_timing, each with its roofline in float32 (NCHW).

    An op's FLOPs per call (`flops_per_call`, forward + backward) are those of its reference; the rate
    is that of its fastest measured implementation. There is no network here, so the ceiling is the
    matmul's.
    """
    rows = ops_timing.bench_ops(device=device, repeats=repeats, warmup=warmup)
    ceilings = roofline.ceilings(device, torch.float32, None, channels_last=False)
    fastest_ms = (min(row[key] for key in ("ref_ms", "cuda_ms") if key in row) for row in rows)
    return [{**row, **roofline.roofline_fields(row["flops_per_call"], 1000 / ms, ceilings)}
            for row, ms in zip(rows, fastest_ms, strict=True)]


def check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"--{name} must be an integer >= {minimum}, got {value!r}")


def bench(preset: str = "cifar10", what: str = "sample", device=None, batch: int | None = None, amp: str | None = None,
          channels_last: bool | None = None, compile: bool = False, cuda_graph: bool = False, repeats: int = 10,
          warmup: int = 3, width: int | None = None, json_out: str | None = None,
          baseline: str | None = None, backend: str = "pytorch") -> list[dict]:
    """Measure sampling (`--what=sample`), training iterations (`train`) or the custom ops (`ops`).

    `--what=train_vs_original` (CPU) alternates our training iteration with the original's (see
    --baseline) iteration by iteration, so that both meet the same machine, and reports the speed-up;
    `--what=sample_vs_original` does the same for a sampling pass (ours NHWC when it samples in bf16, as
    `ddgan sample` does; the original's float32, NCHW, with its resampling).

    preset: the architecture and T to measure, with random weights (no checkpoint needed).
    batch: images per call; default 100 for sampling, the preset's per-process batch for training, and for
        train_vs_original that batch up to 32 (the original's iteration beside ours must fit a CPU's memory).
    amp: auto (default: bf16 on CUDA and for large networks on CPUs with native bf16), bf16, fp16 or none.
    channels_last: NHWC layout; default on for CUDA and for bf16 on the CPU (as sampling and training).
    compile: torch.compile the generator. cuda_graph: replay sampling as one CUDA graph (CUDA only).
    width: shrink the generator to num_channels_dae=width (for quick runs on a CPU).
    json_out: append the JSON lines to this file.
    baseline: the original implementation's CPU path at equal numerics (CPU only): 'original' is its
        resampling (one single-channel conv over N*C images), its AdaGN (eager ops) and, for --what=train, its iteration
        (G's graph built in the D step, two backward passes for real loss and R1, per-parameter Adam
        and EMA); 'original_resampling' swaps in only the resampling.
    backend: with --what=sample (CPU), `onnxruntime` alternates the sampler exported as one ONNX graph, in
        ONNX Runtime (float32), with our PyTorch pass at --amp and the original's (eval.bench_onnx).
    Returns the measurements as dicts (also printed as a table and as JSON lines).
    """
    if what not in WHAT:
        raise ValueError(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    check_count("repeats", repeats, 1)
    check_count("warmup", warmup, 0)
    if batch is not None:
        check_count("batch", batch, 1)
    device = default_device(device)
    if baseline not in BASELINES:
        raise ValueError(f"--baseline must be one of {', '.join(BASELINES[1:])} or left out, got {baseline!r}")
    if (baseline or what.endswith("_vs_original")) and device.type != "cpu":
        raise ValueError(f"--baseline and --what={what} are the original's CPU path: use --device=cpu")
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and (what != "sample" or device.type != "cpu" or baseline or compile):
        raise ValueError("--backend=onnxruntime times --what=sample on --device=cpu against our PyTorch pass and the "
                         "original's; leave out --baseline and --compile")
    if cuda_graph and (device.type != "cuda" or what != "sample"):
        raise ValueError("--cuda_graph applies to --what=sample on a CUDA device only")
    # The ops are timed in float32; --amp=auto (the default) depends on the generator's size on a CPU.
    generator = build_generator(bench_config(preset, width)) \
        if what != "ops" and amp in (None, "auto") and device.type == "cpu" else None
    # As `ddgan sample` and training choose them; the ops are timed in float32.
    amp_dtype, channels_last = precision.run_precision(amp if what != "ops" else "none", device, generator,
                                                       channels_last)
    channels_last = bool(channels_last)
    common = {"preset": preset, "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
              "dtype": str(amp_dtype or torch.float32).removeprefix("torch."), "channels_last": channels_last,
              "compile": bool(compile), "cuda_graph": bool(cuda_graph), "width": width, "repeats": repeats,
              "warmup": warmup, "baseline": baseline}

    baseline_ops = original_ops() if baseline == "original" else original_resampling() if baseline else nullcontext()
    with baseline_ops:
        records = _measure(what, preset, device, batch, amp_dtype, channels_last, compile, cuda_graph, repeats,
                           warmup, width, common, original_work=baseline == "original", backend=backend)
    print(format_table(records))
    lines = [json.dumps(record) for record in records]
    print("\n".join(lines))
    if json_out:
        with open(Path(json_out).expanduser(), "a") as f:
            f.write("".join(line + "\n" for line in lines))
    return records


def _measure(what, preset, device, batch, amp_dtype, channels_last, compile, cuda_graph, repeats, warmup, width,
             common, original_work=False, backend="pytorch") -> list[dict]:
    """The records of one `bench` call: FLOPs counted and ceilings measured before the timings, the ceilings
    again after them (the faster kept)."""
    timed_steps = range(warmup, warmup + repeats)  # each timed trainer starts at step 0
    if what == "ops":
        records = [{"what": "ops", **row, **common} for row in bench_ops_rows(device, repeats, warmup)]
    elif what == "sample" and backend == "onnxruntime":
        from eval.bench_onnx import bench_sample_onnxruntime  # needs the onnx extra: imported when asked for

        config = bench_config(preset, width)
        batch = batch or DEFAULT_SAMPLE_BATCH
        # ONNX Runtime runs our network in float32: the same FLOPs as ours (counted from shapes, not dtypes).
        ours_work = sample_work(config, device, batch, amp_dtype, channels_last)
        with original_ops():
            works = [ours_work, ours_work, sample_work(config, device, batch, None, False)]
        measure_ceilings_first(device, [(amp_dtype, ours_work, channels_last), (None, ours_work, False),
                                        (None, works[2], False)])
        rows = bench_sample_onnxruntime(config, batch, amp_dtype, channels_last, repeats, warmup)
        records = [with_roofline({"what": "sample", **common, "batch": batch, **row}, row_work, device)
                   for row, row_work in zip(rows, works, strict=True)]
    elif what == "sample":
        config = bench_config(preset, width)
        batch = batch or DEFAULT_SAMPLE_BATCH
        work = sample_work(config, device, batch, amp_dtype, channels_last)
        measure_ceilings_first(device, [(amp_dtype, work, channels_last)])
        result = bench_sample(config, device, batch, amp_dtype, channels_last, compile, cuda_graph, repeats, warmup)
        records = [with_roofline({"what": "sample", **common, "batch": batch, **result}, work, device)]
    elif what == "sample_vs_original":
        config = bench_config(preset, width)
        batch = batch or DEFAULT_SAMPLE_BATCH
        ours_work = sample_work(config, device, batch, amp_dtype, channels_last)
        with original_ops():
            their_work = sample_work(config, device, batch, None, False)
        measure_ceilings_first(device, [(amp_dtype, ours_work, channels_last), (None, their_work, False)])
        ours, original = bench_sample_vs_original(config, batch, amp_dtype, channels_last, repeats, warmup, compile)
        records = [with_roofline({"what": "sample", **common, "batch": batch, **row}, row_work, device)
                   for row, row_work in ((ours, ours_work), (original, their_work))]
    elif what == "train_vs_original":
        # Ours at --amp (auto by default); the original's iteration is always float32.
        config = bench_config(preset, width, amp=precision.amp_name(amp_dtype), channels_last=channels_last)
        batch = batch or min(config.batch_size, DEFAULT_TRAIN_VS_ORIGINAL_BATCH)
        ours_work = train_work(config, device, batch, timed_steps)
        with original_ops():
            their_work = train_work(original_config(config), device, batch, timed_steps, original_work=True)
        measure_ceilings_first(device, [(amp_dtype, ours_work, config.channels_last), (None, their_work, False)])
        ours, original = bench_train_vs_original(config, batch, repeats, warmup)
        records = [with_roofline({"what": "train", **common, "batch": batch, **row}, row_work, device)
                   for row, row_work in ((ours, ours_work), (original, their_work))]
    else:
        amp_flag = precision.amp_name(amp_dtype)
        config = bench_config(preset, width, amp=amp_flag, channels_last=channels_last, compile=bool(compile))
        batch = batch or config.batch_size
        work = train_work(config, device, batch, timed_steps, original_work)
        measure_ceilings_first(device, [(amp_dtype, work, channels_last)])
        result = bench_train(config, device, batch, repeats, warmup, original_work)
        records = [with_roofline({"what": "train", **common, "batch": batch, **result}, work, device)]
    return records


def format_table(records: Sequence[dict]) -> str:
    """A fixed-width text table of the main columns (for ops, of every column the rows share)."""
    columns = [c for c in TABLE_COLUMNS if any(c in r for r in records)]
    if records and records[0].get("what") == "ops":
        common = {"what", "preset", "device", "device_type", "torch", "dtype", "channels_last", "compile",
                  "cuda_graph", "width", "repeats", "warmup", "baseline"}
        columns = [c for c in records[0] if c not in common]

    def cell(value) -> str:
        if isinstance(value, float):  # FLOP counts in powers of ten, other large numbers whole
            return f"{value:.4g}" if abs(value) < 1e4 or abs(value) >= 1e9 else f"{value:.0f}"
        return "" if value is None else str(value)

    rows = [[cell(r.get(c)) for c in columns] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


bench_command = prints_its_result(bench)  # bench prints the table and JSON lines


def main(argv: Sequence[str] | None = None) -> None:
    """`python eval/benchmark.py [--what=sample|train|ops] ...` is `ddgan bench ...`."""
    from ddgan.command import run_command

    run_command("bench", bench_command, argv)


if __name__ == "__main__":
    main()
