"""Sampling from a generator in batches: images, interpolations and edits, each image a function of its seed."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ddgan.config import Config
from ddgan.diffusion.process import Diffusion
from ddgan.models.space import space_for
from ddgan.runtime import distributed
from ddgan.runtime.precision import autocast, run_precision
from ddgan.sampling.fast import GraphedSampler, prefetched
from ddgan.sampling.images import to_uint8
from ddgan.sampling.seeds import as_seed, class_labels, interpolation_noise, parse_seeds, seed_vectors, split_noise
from ddgan.spaces import Space


def generate(G: torch.nn.Module, config: Config, seeds: int | str | Sequence[int], batch: int = 64, device=None,
             amp: str | None = None, channels_last: bool = False, progress: bool = True,
             cuda_graph: bool = False, prefetch: int | None = None, labels=None,
             space: Space | None = None, num_steps: int | None = None) -> Iterator[np.ndarray]:
    """Sample the images of `seeds` in batches; yields uint8 (B, H, W, C) numpy arrays in seed order.

    seeds: a list of seeds, or a spec as `parse_seeds` reads it (`64`, `0-49999`, `1,5,7`).
    labels: a conditional G's class for every seed (or one int for all); image i depends on
        (seeds[i], labels[i]) only.
    amp: auto (default: the rule of `ddgan.runtime.precision`), bf16, fp16 or none.
    cuda_graph: record the T-step loop once as a CUDA graph and replay it for every batch.
    prefetch: batches of seed noise drawn ahead in threads while the device samples (default 4 on
    CUDA, where drawing 50 000 CIFAR-10 seeds' noise takes about 3.5 s of one CPU core; 0 on the CPU).
    space: the `ddgan.spaces.Space` that decodes the samples (default: space_for(config); a latent model's opens
    the autoencoder that config.autoencoder names, as load_generator sets it).
    num_steps: run only this many of the T denoising steps (`Diffusion.sample`: each x'_0 diffused forward to the
    next step's input, as UFOGen samples); default the model's `sample_steps` (all T unless it names fewer).
    """
    check_batch(batch)
    num_steps = default_steps(config) if num_steps is None else num_steps
    if num_steps is not None and cuda_graph:
        raise ValueError(f"--cuda_graph records the T-step sampler, and these samples take {num_steps} of the "
                         f"{config.num_timesteps} steps (--steps or the model's sample_steps); leave --cuda_graph out")
    seeds = parse_seeds(seeds) if isinstance(seeds, int | str) else list(seeds)
    labels = class_labels(config, labels, len(seeds))
    device = torch.device(device) if device is not None else next(G.parameters()).device
    chunks = [range(start, min(start + batch, len(seeds))) for start in range(0, len(seeds), batch)]
    draw = functools.partial(_seed_rows, seeds=seeds, config=config, pin_memory=device.type == "cuda")
    yield from _sample_batches(G, config, chunks, draw, labels, None, None, device, amp, channels_last, progress,
                               cuda_graph, (4 if device.type == "cuda" else 0) if prefetch is None else prefetch, space,
                               num_steps=num_steps)


def default_steps(config: Config) -> int | None:
    """The steps the model's samples take unless asked otherwise: its sample_steps, None when that is all T."""
    steps = config.sample_steps
    return None if steps is None or steps == config.num_timesteps else steps


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
    rows = interpolation_noise(as_seed(seed_a), as_seed(seed_b), frames, config)
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
    and denoised with seed i's codes z and noises; k = T starts from eps itself (the input is ignored: plain
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
                    space: Space | None, num_steps: int | None = None) -> Iterator[np.ndarray]:
    """The batch loop behind generate, interpolate and edit: draw(chunk) gives each batch's noise rows."""
    space = space or space_for(config)
    dtype, _ = run_precision(amp, device, G)
    if cuda_graph and device.type != "cuda":
        raise ValueError("--cuda_graph needs a CUDA device")
    diffusion = Diffusion.from_config(config).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    graphed = None
    for chunk, rows in tqdm(zip(chunks, prefetched(chunks, draw, prefetch), strict=True), total=len(chunks),
                            desc="sampling", unit="batch", disable=not progress or len(chunks) <= 1, file=sys.stderr):
        x_T, zs, noises = split_noise(rows.to(device, non_blocking=True), config)
        y = labels[chunk.start:chunk.stop].to(device) if labels is not None else None
        if inputs is not None and start_step < config.num_timesteps:
            x0 = space.encode(inputs[chunk.start:chunk.stop].to(device=device, dtype=x_T.dtype))
            step = torch.full((len(x0),), start_step, dtype=torch.int64, device=device)
            x_T = diffusion.q_sample(x0, step, noise=x_T)
        x_T = x_T.contiguous(memory_format=memory_format)
        if cuda_graph:
            # Recorded at the first batch's size; only the last batch can be smaller, and it is padded.
            graphed = graphed or GraphedSampler(G, diffusion, config.nz, x_T, zs, noises, y, dtype)
            x = graphed(x_T, zs, noises, *([] if y is None else [y]))
        else:
            with torch.no_grad(), autocast(device, dtype):
                x = diffusion.sample(G, x_T, config.nz, zs=zs, noises=noises, labels=y,
                                     start_step=start_step, num_steps=num_steps)
        yield to_uint8(space.decode(x)).permute(0, 2, 3, 1).cpu().numpy()


def check_batch(batch) -> None:
    """Raise ValueError unless --batch is a positive integer."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch must be an integer >= 1 (images per forward pass), got {batch!r}")
