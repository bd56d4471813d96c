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

from ddgan import distributed
from ddgan.config import Config
from ddgan.diffusion import Diffusion
from ddgan.files import atomic_write
from ddgan.precision import amp_dtype, autocast
from ddgan.space import Space, space_for

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
    """(numbers in one x_t, numbers one seed draws): x_T, then T latents, then T noise tensors."""
    pixels = math.prod(config.latent_shape)  # of the tensor the networks see: pixels, wavelets or latents
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
    image = config.latent_shape
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



def compiled_for_sampling(G: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """torch.compile of G for sampling; on the CPU with its weights frozen into the graph.

    Freezing lets inductor treat the weights as constants: it casts and reorders each convolution's
    weight for oneDNN once and folds bias and activation into it, 1.30x faster sampling than eager for a
    CIFAR-10 generator in bf16 on a 2-core Intel Xeon with AMX after a first call of 34-55 s (inductor
    caches its code under /tmp/torchinductor_$USER); BENCHMARKS.md. The weights are read at the first
    call: compile again after they change.
    """
    return torch.compile(G, options={"freezing": True} if torch.device(device).type == "cpu" else None)


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

    New noise (and labels) are copied into the graph's static inputs; a smaller last batch is padded with
    zeros (images do not interact in G, so padding rows change nothing) and cut back after the replay.
    """

    def __init__(self, G, diffusion: Diffusion, nz: int, x_T, latents, noises, labels, dtype: torch.dtype | None):
        self.inputs = [x_T.clone(), latents.clone(), noises.clone()] + ([] if labels is None else [labels.clone()])
        self.batch_dims = (0, 1, 1, 0)[:len(self.inputs)]

        def run():
            with torch.no_grad(), autocast("cuda", dtype, cache_enabled=False):
                x_T, latents, noises, *labels = self.inputs
                self.output = diffusion.sample(G, x_T, nz, latents=latents, noises=noises,
                                               labels=labels[0] if labels else None)

        self.graph = capture_cuda_graph(run)

    def __call__(self, *inputs) -> torch.Tensor:
        n = inputs[0].shape[0]
        for static, new, batch_dim in zip(self.inputs, inputs, self.batch_dims, strict=True):
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


def parse_classes(spec, config: Config) -> list[int]:
    """Class indices from --class: an index (3), a name (cat), a list (0,2 or cat,dog) or `all`."""
    if config.num_classes == 0:
        raise ValueError("--class: this checkpoint is unconditional (trained without --cond=True); leave --class out")
    names = list(config.class_names) or [str(i) for i in range(config.num_classes)]
    listing = ", ".join(f"{i}={name}" for i, name in enumerate(names))
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(config.num_classes))
    parts = [p.strip() for p in spec.split(",") if p.strip()] if isinstance(spec, str) else \
        list(spec) if isinstance(spec, list | tuple) else [spec]
    chosen = []
    for part in parts:
        if isinstance(part, str) and part in names:
            chosen.append(names.index(part))
        elif isinstance(part, int | np.integer) and not isinstance(part, bool) and 0 <= part < config.num_classes:
            chosen.append(int(part))
        elif isinstance(part, str) and part.isdigit() and int(part) < config.num_classes:
            chosen.append(int(part))
        else:
            raise ValueError(f"--class={part!r} is not one of this model's {config.num_classes} classes: {listing} "
                             "(or `all`)")
    if not chosen:
        raise ValueError(f"--class={spec!r} selects no class; choose from {listing} (or `all`)")
    return chosen


def class_labels(config: Config, labels, count: int) -> torch.Tensor | None:
    """The int64 labels [count] of the images to draw (one class, an index or a name, for all), checked."""
    if config.num_classes == 0:
        if labels is not None:
            raise ValueError("--class: this checkpoint is unconditional (trained without --cond=True); "
                             "leave --class out")
        return None
    if labels is None:
        names = ", ".join(config.class_names) or f"0..{config.num_classes - 1}"
        raise ValueError(f"this checkpoint is class-conditional ({config.num_classes} classes: {names}); "
                         "choose them with --class=NAME|INDEX|all")
    if isinstance(labels, str):  # one class by name or index, as --class takes it
        (labels,) = parse_classes(labels, config)[:1] if "," not in labels and labels.strip() != "all" else [None]
        if labels is None:
            raise ValueError("labels: give one class (a name or an index) for all the images, or one label per image")
    labels = torch.full((count,), int(labels)) if isinstance(labels, int | np.integer) else \
        torch.as_tensor(list(labels), dtype=torch.int64)
    if labels.shape != (count,):
        raise ValueError(f"got {labels.numel()} labels for {count} images; give one per image or one for all")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= config.num_classes):
        raise ValueError(f"labels must lie in 0..{config.num_classes - 1}, got {sorted(set(labels.tolist()))}")
    return labels.to(torch.int64)


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation between two vectors (exactly a at weight 0 and b at weight 1)."""
    if weight == 0:
        return a.clone()
    if weight == 1:
        return b.clone()
    cosine = (a @ b / (a.norm() * b.norm())).clamp(-1, 1)
    angle = torch.arccos(cosine)
    if angle.abs() < 1e-6:  # (almost) parallel: the sphere's arc is a line
        return torch.lerp(a, b, weight)
    return (torch.sin((1 - weight) * angle) * a + torch.sin(weight * angle) * b) / torch.sin(angle)


def interpolation_noise(seed_a: int, seed_b: int, frames: int, config: Config) -> torch.Tensor:
    """Rows of sampler noise [frames, numbers per seed] along slerps of x_T, every z and every posterior noise."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"--frames must be an integer >= 2 (the two seeds' images and those between), got {frames!r}")
    ends = seed_vectors([seed_a, seed_b], config)
    pixels, _ = noise_sizes(config)
    # Each draw is a Gaussian vector of its own: interpolate them one by one, not as one long vector.
    sizes = [pixels] + [config.nz] * config.num_timesteps + [pixels] * config.num_timesteps
    parts = list(zip(ends[0].split(sizes), ends[1].split(sizes), strict=True))
    weights = [i / (frames - 1) for i in range(frames)]
    return torch.stack([torch.cat([slerp(a, b, w) for a, b in parts]) for w in weights])


def generate(G: torch.nn.Module, config: Config, seeds: int | str | Sequence[int], batch: int = 64, device=None,
             amp: str | None = None, channels_last: bool = False, progress: bool = True,
             cuda_graph: bool = False, prefetch: int | None = None, labels=None,
             space: Space | None = None) -> Iterator[np.ndarray]:
    """Sample the images of `seeds` in batches; yields uint8 (B, H, W, C) numpy arrays in seed order.

    seeds: a list of seeds, or a spec as `parse_seeds` reads it (`64`, `0-49999`, `1,5,7`).
    labels: a conditional G's class for every seed (or one int for all); image i depends on
        (seeds[i], labels[i]) only.
    amp: auto (default: the rule of `ddgan.precision`), bf16, fp16 or none.
    cuda_graph: record the T-step loop once as a CUDA graph and replay it for every batch.
    prefetch: batches of seed noise drawn ahead in threads while the device samples (default 4 on
    CUDA, where drawing 50 000 CIFAR-10 seeds' noise takes about 3.5 s of one CPU core; 0 on the CPU).
    space: the `ddgan.space` that decodes the samples (default: space_for(config); a latent model's opens
    the autoencoder that config.autoencoder names, as load_generator sets it).
    """
    check_batch(batch)
    seeds = parse_seeds(seeds) if isinstance(seeds, int | str) else list(seeds)
    labels = class_labels(config, labels, len(seeds))
    device = torch.device(device) if device is not None else next(G.parameters()).device
    chunks = [range(start, min(start + batch, len(seeds))) for start in range(0, len(seeds), batch)]
    draw = functools.partial(_seed_rows, seeds=seeds, config=config, pin_memory=device.type == "cuda")
    yield from _sample_batches(G, config, chunks, draw, labels, None, None, device, amp, channels_last, progress,
                               cuda_graph, (4 if device.type == "cuda" else 0) if prefetch is None else prefetch, space)


def generate_share(G: torch.nn.Module, config: Config, seeds: Sequence[int], batch: int,
                   context: distributed.Context, labels=None, **options) -> tuple[list[range], Iterator[np.ndarray]]:
    """This rank's part of generating `seeds` under torchrun: (its share of every round, see
    `distributed.round_shares`; its images, one batch per non-empty share). `options` are generate()'s."""
    check_batch(batch)
    seeds = list(seeds)
    labels = class_labels(config, labels, len(seeds))
    shares = distributed.round_shares(len(seeds), batch, context)
    mine = [index for share in shares for index in share]
    images = generate(G, config, [seeds[i] for i in mine], batch, context.device, progress=False,
                      labels=None if labels is None else labels[mine], **options)
    return shares, images


def generate_shared(G: torch.nn.Module, config: Config, seeds: Sequence[int], batch: int,
                    context: distributed.Context, labels=None, progress: bool = True,
                    **options) -> Iterator[np.ndarray]:
    """generate() split over the ranks of a torchrun job: rank 0 yields every image in seed order, others nothing.

    Each round, every rank draws one batch of its own and rank 0 gathers them, so the images are those
    of one process; the progress bar counts all ranks' images. Every rank must consume the iterator to
    its end.
    """
    shares, local = generate_share(G, config, seeds, batch, context, labels, **options)
    with tqdm(total=len(seeds), desc="sampling", unit="img", file=sys.stderr,
              disable=not (progress and context.is_main) or len(seeds) <= batch) as bar:
        for parts in distributed.gather_rounds(local, shares, context):
            images = np.concatenate(parts)
            bar.update(len(images))
            yield images


def interpolate(G: torch.nn.Module, config: Config, seed_a: int, seed_b: int, frames: int = 8, label=None,
                batch: int = 64, device=None, amp: str | None = None, space: Space | None = None) -> np.ndarray:
    """uint8 (frames, H, W, C) images along a spherical path from seed_a's image to seed_b's (for a class)."""
    rows = interpolation_noise(_as_seed(seed_a), _as_seed(seed_b), frames, config)
    labels = class_labels(config, label, frames)
    device = torch.device(device) if device is not None else next(G.parameters()).device
    chunks = [range(start, min(start + batch, frames)) for start in range(0, frames, batch)]
    return np.concatenate(list(_sample_batches(G, config, chunks, lambda chunk: rows[chunk.start:chunk.stop],
                                               labels, None, None, device, amp, False, False, False, 0, space)))


def edit(G: torch.nn.Module, config: Config, images: torch.Tensor, seeds: Sequence[int], start_step: int,
         labels=None, batch: int = 64, device=None, amp: str | None = None,
         progress: bool = True, space: Space | None = None) -> Iterator[np.ndarray]:
    """Add noise, then denoise (SDEdit): diffuse images [N, C, H, W] in [-1, 1] to step k, run the k steps left.

    Image i is encoded into the model's space, diffused with seed i's x_T draw, x_k = a_k x_0 + sigma_k eps,
    and denoised with seed i's latents and noises; k = T starts from eps itself (the input is ignored: plain
    sampling of the seed), k = 1 keeps most of the input. Yields uint8 (B, H, W, C) arrays in order.
    """
    check_batch(batch)
    seeds = list(seeds)
    if images.ndim != 4 or tuple(images.shape[1:]) != (config.num_channels, config.image_size, config.image_size):
        raise ValueError(f"images: expected [N, {config.num_channels}, {config.image_size}, {config.image_size}], "
                         f"got {list(images.shape)}")
    if len(seeds) != len(images):
        raise ValueError(f"--seeds selects {len(seeds)} seeds for {len(images)} input images; give one per image")
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 1 <= start_step <= config.num_timesteps:
        raise ValueError(f"--start_step must be an integer in 1..{config.num_timesteps} (the model's T), got "
                         f"{start_step!r}")
    labels = class_labels(config, labels, len(seeds))
    device = torch.device(device) if device is not None else next(G.parameters()).device
    chunks = [range(start, min(start + batch, len(seeds))) for start in range(0, len(seeds), batch)]
    draw = functools.partial(_seed_rows, seeds=seeds, config=config, pin_memory=False)
    yield from _sample_batches(G, config, chunks, draw, labels, images, start_step, device, amp, False, progress,
                               False, 0, space)


def _seed_rows(chunk: range, seeds: Sequence[int], config: Config, pin_memory: bool) -> torch.Tensor:
    return seed_vectors(seeds[chunk.start:chunk.stop], config, pin_memory)


def _sample_batches(G, config: Config, chunks: Sequence[range], draw: Callable, labels: torch.Tensor | None,
                    inputs: torch.Tensor | None, start_step: int | None, device: torch.device, amp: str | None,
                    channels_last: bool, progress: bool, cuda_graph: bool, prefetch: int,
                    space: Space | None) -> Iterator[np.ndarray]:
    """The batch loop behind generate, interpolate and edit: draw(chunk) gives each batch's noise rows."""
    space = space or space_for(config)
    dtype = amp_dtype(amp, device, sum(p.numel() for p in G.parameters()))
    if cuda_graph and device.type != "cuda":
        raise ValueError("--cuda_graph needs a CUDA device")
    diffusion = Diffusion.from_config(config).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    graphed = None
    for chunk, rows in tqdm(zip(chunks, prefetched(chunks, draw, prefetch), strict=True), total=len(chunks),
                            desc="sampling", unit="batch", disable=not progress or len(chunks) <= 1, file=sys.stderr):
        x_T, latents, noises = split_noise(rows.to(device, non_blocking=True), config)
        y = labels[chunk.start:chunk.stop].to(device) if labels is not None else None
        if inputs is not None and start_step < config.num_timesteps:
            x0 = space.encode(inputs[chunk.start:chunk.stop].to(device=device, dtype=x_T.dtype))
            step = torch.full((len(x0),), start_step, dtype=torch.int64, device=device)
            x_T = diffusion.q_sample(x0, step, noise=x_T)
        x_T = x_T.contiguous(memory_format=memory_format)
        if cuda_graph:
            # Recorded at the first batch's size; only the last batch can be smaller, and it is padded.
            graphed = graphed or GraphedSampler(G, diffusion, config.nz, x_T, latents, noises, y, dtype)
            x = graphed(x_T, latents, noises, *([] if y is None else [y]))
        else:
            with torch.no_grad(), autocast(device, dtype):
                x = diffusion.sample(G, x_T, config.nz, latents=latents, noises=noises, labels=y,
                                     start_step=start_step)
        yield to_uint8(space.decode(x)).permute(0, 2, 3, 1).cpu().numpy()


def check_batch(batch) -> None:
    """Raise ValueError unless --batch is a positive integer."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch must be an integer >= 1 (images per forward pass), got {batch!r}")


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


MAX_GRID_CLASSES = 16  # grids show one row per class up to this many, then an evenly spaced subset


def grid_image(images: np.ndarray, nrow: int | None = None, scale: int = 1) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images into one image, `nrow` per row (default near-square), each upscaled
    `scale` times (nearest neighbour, so small images stay crisp)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images: expected uint8 (N, H, W, C) with N >= 1 and C in (1, 3), got {images.dtype} "
                         f"{images.shape}")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    canvas = np.zeros((math.ceil(n / nrow) * h, nrow * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        row, col = divmod(i, nrow)
        canvas[row * h:(row + 1) * h, col * w:(col + 1) * w] = image
    return canvas


def readable_scale(image_size: int) -> int:
    """How many times a grid enlarges images smaller than 32 px (16 px -> 4x), so that one can see them."""
    return max(1, 64 // image_size) if image_size < 32 else 1


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> Path:
    """Write uint8 (N, H, W, C) images as one grid PNG (see grid_image), atomically."""
    return write_png(grid_image(images, nrow, scale), path)


def grid_classes(config: Config) -> list[int]:
    """The classes a grid shows, one row each: all of them, or an evenly spaced MAX_GRID_CLASSES of them."""
    if config.num_classes <= MAX_GRID_CLASSES:
        return list(range(config.num_classes))
    return [round(i * (config.num_classes - 1) / (MAX_GRID_CLASSES - 1)) for i in range(MAX_GRID_CLASSES)]


def grid_layout(config: Config, count: int) -> tuple[list[int], list[int] | None, int | None]:
    """(seeds, labels, images per row) of a fixed-seed grid of about `count` images: for a conditional model
    one row per class, each row seeds 0..columns-1; else seeds 0..count-1, near-square."""
    if config.num_classes == 0:
        return list(range(count)), None, None
    classes = grid_classes(config)
    columns = max(1, count // len(classes))
    return list(range(columns)) * len(classes), [c for c in classes for _ in range(columns)], columns


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 (H, W, C) image as PNG atomically, so readers never see half of it."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    # No fsync: a folder of 50 000 sample PNGs would wait on the disk 50 000 times, and they can be redrawn.
    return atomic_write(path, lambda f: pil.save(f, format="PNG"), durable=False)
