"""Each image's randomness: seeds parsed from the command line, the noise a seed draws (x_T, every step's z
and posterior noise, from one CPU generator seeded with it), class labels, and interpolation between seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ddgan.config import Config

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
        seeds = [as_seed(s) for s in spec]
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
            return [as_seed(int(part))]
        low, high = as_seed(int(first)), as_seed(int(last))
    except ValueError as error:
        if "--seeds" in str(error):
            raise
        raise ValueError(f"--seeds: cannot read {part!r}; write a range like 0-49999 or a list like 1,5,7") from None
    if high < low:
        raise ValueError(f"--seeds: the range {part} is empty (it ends before it starts); write {last}-{first}?")
    return list(range(low, high + 1))


def as_seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"--seeds: every seed must be an integer in 0..{MAX_SEED}, got {value!r}")
    return int(value)


def noise_sizes(config: Config) -> tuple[int, int]:
    """(numbers in one x_t, numbers one seed draws): x_T, then T codes z, then T noise tensors."""
    pixels = math.prod(config.diffused_shape)  # of the tensor the networks see: pixels, wavelets or latents
    return pixels, pixels + config.num_timesteps * (config.nz + pixels)


def seed_vectors(seeds: Sequence[int], config: Config, pin_memory: bool = False) -> torch.Tensor:
    """Every random number the sampler needs, one row per seed, drawn on the CPU: [B, numbers per seed]."""
    _, per_seed = noise_sizes(config)
    rows = torch.empty(len(seeds), per_seed, pin_memory=pin_memory)
    for row, seed in zip(rows, seeds, strict=True):
        torch.randn(per_seed, generator=torch.Generator("cpu").manual_seed(seed), out=row)
    return rows


def split_noise(rows: torch.Tensor, config: Config):
    """Cut seed vectors into (x_T [B,C,H,W], zs [T,B,nz] (every step's z), noises [T,B,C,H,W]), indexed by step t.

    A row is laid out as x_T, then z_0 .. z_{T-1}, then the posterior noise of steps 0 .. T-1.
    """
    pixels, _ = noise_sizes(config)
    batch, steps, nz = rows.shape[0], config.num_timesteps, config.nz
    image = config.diffused_shape
    x_T, zs, noises = rows.split([pixels, steps * nz, steps * pixels], dim=1)
    zs = zs.reshape(batch, steps, nz).transpose(0, 1).contiguous()
    noises = noises.reshape(batch, steps, *image).transpose(0, 1).contiguous()
    return x_T.reshape(batch, *image), zs, noises


def seed_noise(seeds: Sequence[int], config: Config):
    """(x_T, zs, noises) for these seeds on the CPU; image i depends on seeds[i] only."""
    return split_noise(seed_vectors(seeds, config), config)


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
