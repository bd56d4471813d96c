"""Sampling from a generator: each image a function of its own seed, in batches, as uint8 arrays or grids.

Image i is determined by seed s_i alone: one CPU generator seeded with s_i draws every random number
the T-step sampler needs (x_T, the latent z of every step and the posterior noise of every step), so a
seed gives the same image in any batch, split or order. The T-step loop itself is
`ddgan.diffusion.Diffusion.sample`; this module feeds it the seeds' noise and turns its output into
images. In Python:

    G, config = ddgan.models.load_generator("runs/00000-demo-demo")
    images = np.concatenate(list(ddgan.sampling.generate(G, config, seeds=range(64))))  # uint8 NHWC
    ddgan.sampling.save_grid(images, "grid.png")

`ddgan sample` (eval/sample.py) is the command line around it.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ddgan.config import Config
from ddgan.diffusion import Diffusion
from ddgan.files import atomic_write
from ddgan.precision import amp_dtype, autocast

DEFAULT_COUNT = 64
MAX_SEED = 2**63 - 1


def parse_seeds(spec: int | str | Sequence[int]) -> list[int]:
    """Seeds from a count (`64` = 0..63), ranges and lists (`0-49999`, `1,5,7`, `3,10-12`) or a sequence."""
    if isinstance(spec, bool):
        raise ValueError(f"--seeds must be a count, a range like 0-49999 or a list like 1,5,7; got {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"--seeds={spec}: a seed count must be >= 1")
        return list(range(spec))
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        seeds = [s for part in parts for s in _parse_seed_part(part)]
    else:
        seeds = [_as_seed(s) for s in spec]
    if not seeds:
        raise ValueError(f"--seeds={spec!r} selects no seeds; give e.g. --seeds=0-63")
    if len(set(seeds)) != len(seeds):
        duplicated = sorted({s for s in seeds if seeds.count(s) > 1})[:5] if len(seeds) < 10_000 else "some"
        raise ValueError(f"--seeds={spec!r} repeats seeds ({duplicated}); each seed names one image")
    return seeds


def seed_list(n: int | None, seeds, default: int = DEFAULT_COUNT) -> list[int]:
    """The seeds of a run from --n (seeds 0..n-1, else `default` of them) or --seeds; both must agree if given."""
    if seeds is None:
        count = default if n is None else n
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"--n must be an integer >= 1 (the number of images), got {n!r}")
        return list(range(count))
    chosen = parse_seeds(seeds)
    if n is not None and n != len(chosen):
        raise ValueError(f"--n={n} disagrees with --seeds, which selects {len(chosen)} images; give only one")
    return chosen


def _parse_seed_part(part: str) -> list[int]:
    """One comma-separated piece of --seeds: `7` or `0-49999` (inclusive)."""
    first, dash, last = part.partition("-")
    try:
        if not dash:
            return [_as_seed(int(part))]
        low, high = _as_seed(int(first)), _as_seed(int(last))
    except ValueError as error:
        if "--seeds" in str(error):
            raise
        raise ValueError(f"--seeds: cannot read {part!r}; write a range like 0-49999 or a list like 1,5,7") from None
    if high < low:
        raise ValueError(f"--seeds: the range {part} is empty (it ends before it starts); write {last}-{first}?")
    return list(range(low, high + 1))


def _as_seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"--seeds: every seed must be an integer in 0..{MAX_SEED}, got {value!r}")
    return int(value)



def noise_sizes(config: Config) -> tuple[int, int]:
    """(numbers in one image, numbers one seed draws): x_T, then T latents, then T noise images."""
    pixels = config.num_channels * config.image_size**2
    return pixels, pixels + config.num_timesteps * (config.nz + pixels)


def seed_vectors(seeds: Sequence[int], config: Config, pin_memory: bool = False) -> torch.Tensor:
    """Every random number the sampler needs, one row per seed, drawn on the CPU: [B, numbers per seed]."""
    _, per_seed = noise_sizes(config)
    rows = torch.empty(len(seeds), per_seed, pin_memory=pin_memory)
    for row, seed in zip(rows, seeds, strict=True):
        torch.randn(per_seed, generator=torch.Generator("cpu").manual_seed(seed), out=row)
    return rows


def split_noise(rows: torch.Tensor, config: Config):
    """Cut seed vectors into (x_T [B,C,H,W], latents [T,B,nz], noises [T,B,C,H,W]), indexed by step t.

    A row is laid out as x_T, then z_0 .. z_{T-1}, then the posterior noise of steps 0 .. T-1.
    """
    pixels, _ = noise_sizes(config)
    batch, steps, nz = rows.shape[0], config.num_timesteps, config.nz
    image = (config.num_channels, config.image_size, config.image_size)
    x_T, latents, noises = rows.split([pixels, steps * nz, steps * pixels], dim=1)
    latents = latents.reshape(batch, steps, nz).transpose(0, 1).contiguous()
    noises = noises.reshape(batch, steps, *image).transpose(0, 1).contiguous()
    return x_T.reshape(batch, *image), latents, noises


def seed_noise(seeds: Sequence[int], config: Config):
    """(x_T, latents, noises) for these seeds on the CPU; image i depends on seeds[i] only."""
    return split_noise(seed_vectors(seeds, config), config)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 in [0, 255], same layout.

    Computes floor((x + 1) * 127.5 + 0.5), i.e. rounds half up, as torchvision's save_image does for
    (x + 1) / 2; it inverts the data pipeline's u / 127.5 - 1 exactly for every uint8 u.
    """
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)



def capture_cuda_graph(run) -> torch.cuda.CUDAGraph:
    """Record `run` (which reads and writes static tensors only) as a CUDA graph, after a warm-up."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # allocations and autotuning happen outside the graph
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph


class GraphedSampler:
    """The whole T-step sampling loop replayed as one CUDA graph for a fixed batch size.

    New noise is copied into the graph's static inputs; a smaller last batch is padded with zeros
    (images do not interact in G, so padding rows change nothing) and cut back after the replay.
    """

    def __init__(self, G, diffusion: Diffusion, nz: int, x_T, latents, noises, dtype: torch.dtype | None):
        self.inputs = [x_T.clone(), latents.clone(), noises.clone()]

        def run():
            with torch.no_grad(), autocast("cuda", dtype, cache_enabled=False):
                x_T, latents, noises = self.inputs
                self.output = diffusion.sample(G, x_T, nz, latents=latents, noises=noises)

        self.graph = capture_cuda_graph(run)

    def __call__(self, x_T, latents, noises) -> torch.Tensor:
        n = x_T.shape[0]
        for static, new, batch_dim in zip(self.inputs, (x_T, latents, noises), (0, 1, 1), strict=True):
            static.narrow(batch_dim, 0, n).copy_(new)
            static.narrow(batch_dim, n, static.shape[batch_dim] - n).zero_()
        self.graph.replay()
        return self.output[:n].clone()


def prefetched(chunks: Sequence, draw: Callable, depth: int) -> Iterator:
    """draw(chunk) for each chunk in order, computed up to `depth` chunks ahead in threads (0: inline)."""
    if depth == 0:
        yield from map(draw, chunks)
        return
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.submit(draw, chunk))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def generate(G: torch.nn.Module, config: Config, seeds: int | str | Sequence[int], batch: int = 64, device=None,
             amp: str | None = None, channels_last: bool = False, progress: bool = True,
             cuda_graph: bool = False, prefetch: int | None = None) -> Iterator[np.ndarray]:
    """Sample the images of `seeds` in batches; yields uint8 (B, H, W, C) numpy arrays in seed order.

    seeds: a list of seeds, or a spec as `parse_seeds` reads it (`64`, `0-49999`, `1,5,7`).
    amp: bf16, fp16 or none; default bf16 on CUDA, full float32 on the CPU (`ddgan.precision`).
    cuda_graph: record the T-step loop once as a CUDA graph and replay it for every batch.
    prefetch: batches of seed noise drawn ahead in threads while the device samples (default 4 on
    CUDA, where drawing 50 000 CIFAR-10 seeds' noise takes about 3.5 s of one CPU core; 0 on the CPU).
    """
    check_batch(batch)
    seeds = parse_seeds(seeds) if isinstance(seeds, int | str) else list(seeds)
    device = torch.device(device) if device is not None else next(G.parameters()).device
    dtype = amp_dtype(amp, device)
    if cuda_graph and device.type != "cuda":
        raise ValueError("--cuda_graph needs a CUDA device")
    graphed = None
    diffusion = Diffusion.from_config(config).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    chunks = [seeds[start:start + batch] for start in range(0, len(seeds), batch)]
    prefetch = (4 if device.type == "cuda" else 0) if prefetch is None else prefetch
    draw = functools.partial(seed_vectors, config=config, pin_memory=device.type == "cuda")
    rows_per_batch = prefetched(chunks, draw, prefetch)
    for rows in tqdm(rows_per_batch, total=len(chunks), desc="sampling", unit="batch",
                     disable=not progress or len(chunks) <= 1, file=sys.stderr):
        x_T, latents, noises = split_noise(rows.to(device, non_blocking=True), config)
        x_T = x_T.contiguous(memory_format=memory_format)
        if cuda_graph:
            # Recorded at the first batch's size; only the last batch can be smaller, and it is padded.
            graphed = graphed or GraphedSampler(G, diffusion, config.nz, x_T, latents, noises, dtype)
            x = graphed(x_T, latents, noises)
        else:
            with torch.no_grad(), autocast(device, dtype):
                x = diffusion.sample(G, x_T, config.nz, latents=latents, noises=noises)
        yield to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()


def check_batch(batch) -> None:
    """Raise ValueError unless --batch is a positive integer."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch must be an integer >= 1 (images per forward pass), got {batch!r}")


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def grid_image(images: np.ndarray, nrow: int | None = None) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images into one (rows*H, nrow*W, C) image, `nrow` per row (default near-square)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images: expected uint8 (N, H, W, C) with N >= 1 and C in (1, 3), got {images.dtype} "
                         f"{images.shape}")
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    canvas = np.zeros((math.ceil(n / nrow) * h, nrow * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        row, col = divmod(i, nrow)
        canvas[row * h:(row + 1) * h, col * w:(col + 1) * w] = image
    return canvas


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Write uint8 (N, H, W, C) images as one grid PNG (see grid_image), atomically."""
    return write_png(grid_image(images, nrow), path)


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 (H, W, C) image as PNG atomically, so readers never see half of it."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    # No fsync: a folder of 50 000 sample PNGs would wait on the disk 50 000 times, and they can be redrawn.
    return atomic_write(path, lambda f: pil.save(f, format="PNG"), durable=False)
