"""`ddgan bench --what=sample --backend=onnxruntime`: the ONNX sampler graph in ONNX Runtime against PyTorch.

Three sampling passes of one batch take turns call by call (`eval.timing.alternated`), so that all meet
the same machine: the whole T-step sampler exported as one ONNX graph (`ddgan.export.onnx`) in ONNX
Runtime on the CPU (float32, as many threads as PyTorch uses), our PyTorch path at --amp (as `ddgan sample`
runs it) and the original's (float32, NCHW, its resampling). The generator has random weights; the export
happens before the timing and is not timed. The ONNX Runtime row also says how closely its images of seeds
0..batch-1 match `ddgan.sampling.generate`'s in float32 (`uint8_equal`, the fraction of equal values, and
`uint8_max_difference`): a check that the preset's whole graph exports and runs right.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ddgan.config import Config
from ddgan.export import onnx as onnx_sampler
from ddgan.models import build_generator
from ddgan.sampling import generate
from eval.timing import alternated, original_sampling_pass, sample_timings, sampling_pass


def onnxruntime_pass(config: Config, batch: int, folder: Path) -> tuple[Callable[[], object], dict]:
    """(one ONNX Runtime sampling pass of `batch` images as a function to time, what the row says about it)."""
    G = build_generator(config).eval().requires_grad_(False)
    started = time.perf_counter()
    path = onnx_sampler.export_onnx(G, config, folder / "sampler.onnx")
    about = {"export_s": time.perf_counter() - started, "onnx_mb": path.stat().st_size / 2**20}
    runner = onnx_sampler.OnnxSampler(path)
    label = 0 if config.num_classes else None
    inputs = onnx_sampler.onnx_inputs(config, batch, labels=label)
    images = runner.run(inputs).astype(np.int16)
    expected = np.concatenate(list(generate(G, config, range(batch), batch=batch, progress=False, amp="none",
                                            labels=label)))
    difference = np.abs(images - expected)
    about |= {"ort_threads": runner.session.get_session_options().intra_op_num_threads,
              "uint8_equal": float((difference == 0).mean()), "uint8_max_difference": int(difference.max())}
    return (lambda: runner.run(inputs)), about


def bench_sample_onnxruntime(config: Config, batch: int, amp_dtype, channels_last: bool, repeats: int,
                             warmup: int) -> list[dict]:
    """Rows for ONNX Runtime, our PyTorch pass and the original's, alternated (CPU); speed-ups against the
    original's."""
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="ddgan-bench-onnx-") as folder:
        onnxruntime, about = onnxruntime_pass(config, batch, Path(folder))
        ours = sampling_pass(config, device, batch, amp_dtype, channels_last)
        times = alternated({"onnxruntime": onnxruntime, "ours": ours,
                            "original": original_sampling_pass(config, batch)}, repeats, warmup)
    original_median = statistics.median(times["original"])
    ours_dtype = str(amp_dtype or torch.float32).removeprefix("torch.")
    rows = {"onnxruntime": {"baseline": None, "backend": "onnxruntime", "channels_last": False, "dtype": "float32",
                            **about},
            "ours": {"baseline": None, "backend": "pytorch", "channels_last": channels_last, "dtype": ours_dtype},
            "original": {"baseline": "original", "backend": "pytorch", "channels_last": False, "dtype": "float32"}}
    for name, row in rows.items():
        row.update(sample_timings(times[name], batch, config))
        if name != "original":
            row["speedup_vs_original"] = original_median / statistics.median(times[name])
    return list(rows.values())
