"""How the benchmarks time work: warm-up, synchronised repeats, calls alternated between contenders, and the
sampling passes (ours and the original's) that `ddgan bench` and `eval.bench_onnx` time."""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from ddgan.config import Config
from ddgan.diffusion.process import Diffusion
from ddgan.models import build_generator
from ddgan.models.space import space_for
from ddgan.runtime.precision import autocast
from ddgan.sampling.fast import capture_cuda_graph, compiled_for_sampling
from eval import roofline
from eval.baseline import original_ops
from ops.cpu_library import cpuinfo_value


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpuinfo_value("model name") or platform.processor() or "cpu"


def time_calls(run: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of `run` over `repeats` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    roofline.synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        roofline.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: allocated on the GPU since the timing began, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sampling_pass(config: Config, device: torch.device, batch: int, amp_dtype, channels_last: bool,
                  compile: bool = False, cuda_graph: bool = False) -> Callable[[], torch.Tensor]:
    """One T-step sampling pass of a batch with a randomly initialised generator, as a function to time."""
    G = build_generator(config).to(device).eval().requires_grad_(False)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    G = G.to(memory_format=memory_format)
    net = compiled_for_sampling(G, device) if compile else G
    diffusion = Diffusion.from_config(config).to(device)
    space = space_for(config)
    T, image = config.num_timesteps, space.shape
    x_T = torch.randn(batch, *image, device=device).contiguous(memory_format=memory_format)
    zs = torch.randn(T, batch, config.nz, device=device)
    noises = torch.randn(T, batch, *image, device=device)

    def run():
        # Inside a CUDA graph autocast may not cache casted weights across the capture boundary.
        with torch.no_grad(), autocast(device, amp_dtype, cache_enabled=not cuda_graph):
            return space.decode(diffusion.sample(net, x_T, config.nz, zs=zs, noises=noises))

    return capture_cuda_graph(run).replay if cuda_graph else run


def sample_timings(times: Sequence[float], batch: int, config: Config) -> dict:
    """Throughput and per-pass times of timed sampling passes (seconds each)."""
    return {"images_per_s": batch * len(times) / sum(times), "ms_median": 1000 * statistics.median(times),
            "ms_mean": 1000 * statistics.fmean(times), "T": config.num_timesteps}


def alternated(runs: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each run, the runs taking turns call by call so that all meet the same machine."""
    times = {name: [] for name in runs}
    for index in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def original_sampling_pass(config: Config, batch: int) -> Callable[[], torch.Tensor]:
    """The original's sampling pass on the CPU (float32, NCHW, its resampling and AdaGN) as a function to time."""
    run = sampling_pass(config, torch.device("cpu"), batch, None, False)

    def original():
        with original_ops():
            return run()

    return original
