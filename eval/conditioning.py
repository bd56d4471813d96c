"""How much the class label decides what a class-conditional model draws, measured in G and in D.

For each checkpoint of a run (or one file), as JSON lines:

- `class_share_style`, `class_share_first`, `class_share_image`: of the variance of G's style vectors
  (the mapping network's output, which drives every AdaGN), of its first prediction x'_0 from pure noise
  (step T-1) and of the final images, the share that changes with the class when the seed is held, against
  the share that changes with the seed when the class is held: 1 means the label alone decides, 0 that
  it is ignored.
- `within_class_spread`: the pixels' standard deviation among a class's samples over that among the
  class's real images, averaged over the classes: 1 is as varied as the data, 0 one image per class.
- `d_label_gap`: D's mean logit on real pairs with their own label minus with a wrong one (positive: D
  punishes a wrong label, so G learns to follow it); `d_real_fake_gap`: its mean logit on real pairs minus
  on G's pairs for the same labels; both also per step t. With --block=2, `d_block_gain_t*`: how much D's
  logit on G's pairs rises when G's x'_0 is averaged over 2x2 blocks (is D judging the blocks?).

    python -m eval.conditioning measure RUN [--n=64]

`z-share`: of the images' variance, the share that changes with the noise code z alone (x_T, the step noises
and the class held): near 0, the generator ignores z.

    python -m eval.conditioning z-share RUN
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddgan.config import Config
from ddgan.data import open_dataset
from ddgan.data.images import from_uint8
from ddgan.diffusion.process import Diffusion
from ddgan.models import build_discriminator, build_generator, checkpoint
from ddgan.models.space import space_for
from ddgan.sampling import generate, seed_noise
from ddgan.spaces import kept_config


def class_share(values: torch.Tensor) -> float:
    """values [K classes, N seeds, ...]: variance across classes (seed held) over that plus across seeds."""
    flat = values.flatten(2).double()
    across_classes = flat.var(0, unbiased=False).mean()
    across_seeds = flat.var(1, unbiased=False).mean()
    return float(across_classes / (across_classes + across_seeds + 1e-20))


def labelled_data(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's training images [N, C, H, W] in [-1, 1] and their labels [N]."""
    data = open_dataset(config.data, config.image_size, config.num_channels, labels=True)
    items = [data[i] for i in range(len(data))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def spread(images: torch.Tensor) -> float:
    """The pixels' standard deviation among images [N, ...], averaged over the pixels."""
    return float(images.flatten(1).double().std(0).mean())


@torch.no_grad()
def generator_shares(G: torch.nn.Module, config: Config, n: int, real: tuple) -> dict:
    """The class shares of G's style vectors, first prediction from pure noise, and final images; the
    within-class spread of the final images against the real images'."""
    seeds = list(range(n))
    x_T, z_steps = seed_noise(seeds, config)[:2]
    t = torch.full((n,), config.num_timesteps - 1, dtype=torch.int64)
    styles, firsts, images = [], [], []
    for label in range(config.num_classes):
        y = torch.full((n,), label, dtype=torch.int64)
        styles.append(G.z_mapping(z_steps[-1], y))
        firsts.append(G(x_T, t, z_steps[-1], y))
        images.append(torch.from_numpy(np.concatenate(list(
            generate(G, config, seeds, batch=n, labels=label, progress=False)))).float())
    x, y = real
    ratios = [spread(from_uint8(images[k])) / spread(x[y == k]) for k in range(config.num_classes)]
    return {"class_share_style": round(class_share(torch.stack(styles)), 4),
            "class_share_first": round(class_share(torch.stack(firsts)), 4),
            "class_share_image": round(class_share(torch.stack(images)), 4),
            "within_class_spread": round(float(np.mean(ratios)), 4)}


@torch.no_grad()
def discriminator_gaps(D: torch.nn.Module, G: torch.nn.Module, config: Config, real: tuple, n: int,
                       seed: int = 0, block: int = 0) -> dict:
    """D's logit gaps (own label - wrong label, real - fake) on n real pairs per step t; with `block`, also
    how much D's logit on G's pairs rises when G's x'_0 is made constant over block x block pixels."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(real[1]), generator=gen)[:n]
    x0, y = space_for(config).encode(real[0][index]), real[1][index]
    wrong = (y + torch.randint(1, config.num_classes, y.shape, generator=gen)) % config.num_classes
    diffusion = Diffusion.from_config(config)
    report, label_gaps, fake_gaps = {}, [], []
    for step in range(config.num_timesteps):
        t = torch.full((len(y),), step, dtype=torch.int64)
        x_t, x_next = diffusion.q_sample_pairs(x0, t, generator=gen)
        z = torch.randn(len(y), config.nz, generator=gen)
        x0_pred = G(x_next, t, z, y)
        state = gen.get_state()
        fake = diffusion.posterior_sample(x0_pred, x_next, t, generator=gen)
        real_logits, fake_logits = D(x_t, t, x_next, y), D(fake, t, x_next, y)
        label_gaps.append(float((real_logits - D(x_t, t, x_next, wrong)).mean()))
        fake_gaps.append(float((real_logits - fake_logits).mean()))
        if block:
            blocky = F.interpolate(F.avg_pool2d(x0_pred, block), scale_factor=block, mode="nearest")
            gen.set_state(state)  # the same posterior noise
            blocky_fake = diffusion.posterior_sample(blocky, x_next, t, generator=gen)
            report[f"d_block_gain_t{step}"] = round(float((D(blocky_fake, t, x_next, y) - fake_logits).mean()), 4)
        report[f"d_label_gap_t{step}"] = round(label_gaps[-1], 4)
        report[f"d_real_fake_gap_t{step}"] = round(fake_gaps[-1], 4)
    return {"d_label_gap": round(float(np.mean(label_gaps)), 4),
            "d_real_fake_gap": round(float(np.mean(fake_gaps)), 4), **report}


@torch.no_grad()
def z_share(G: torch.nn.Module, config: Config, n: int = 16, bases: int = 8) -> dict:
    """How much the noise code z decides an image: of the final images' pixel variance, the share that changes
    with z alone (x_T, every step's posterior noise and the class held, one of `bases` seeds each; the z of every
    step from n other seeds), and the same share of the first prediction x'_0 from pure noise (step T-1).
    0: G ignores z; the images' share is at most 1."""
    x_T, _, noises = seed_noise(range(bases), config)
    _, zs, _ = seed_noise(range(10_000, 10_000 + n), config)
    diffusion, space = Diffusion.from_config(config), space_for(config)
    t = torch.full((n,), config.num_timesteps - 1, dtype=torch.int64)
    images, firsts = [], []
    for base in range(bases):
        held_x = x_T[base:base + 1].expand(n, *x_T.shape[1:])
        held_noise = noises[:, base:base + 1].expand(-1, n, *noises.shape[2:])
        labels = (torch.full((n,), base % config.num_classes, dtype=torch.int64),) if config.num_classes else ()
        images.append(space.decode(diffusion.sample(G, held_x, config.nz, zs=zs, noises=held_noise,
                                                    labels=labels[0] if labels else None)))
        firsts.append(G(held_x, t, zs[-1], *labels))

    def share(values: list[torch.Tensor]) -> float:
        flat = torch.stack(values).flatten(2).double()  # [bases, n, pixels]
        return float(flat.var(1, unbiased=False).mean() / (flat.flatten(0, 1).var(0, unbiased=False).mean() + 1e-20))

    return {"z_share_image": round(share(images), 4), "z_share_first": round(share(firsts), 4)}


def z_share_command(ckpt: str, n: int = 16, bases: int = 8) -> dict:
    """`z-share RUN`: how much z decides the images of a checkpoint's EMA generator (see z_share)."""
    from ddgan.models import load_generator

    G, config = load_generator(ckpt)
    report = {"checkpoint": str(ckpt), **z_share(G, config, n, bases)}
    print(json.dumps(report))
    return report


def measure(ckpt: str, n: int = 64, block: int = 0) -> list[dict]:
    """The measurements for every checkpoint of a run folder (oldest first), or for one file.

    block: also report `d_block_gain_t*`, how much D's logit on G's pairs rises when G's prediction is
        averaged over block x block pixels (for data upscaled by that factor, nearest: blocky data).
    """
    files = checkpoint.list_checkpoints(ckpt) if Path(ckpt).is_dir() else [checkpoint.resolve(ckpt)]
    reports, real = [], None
    for file in files:
        state = checkpoint.load(file)
        config = kept_config(Config.from_dict(state["config"], f"checkpoint {file}"), file.parent)
        if config.num_classes == 0:
            raise ValueError(f"{file} is unconditional (trained without --cond=True): it has no label to measure")
        real = real or labelled_data(config)
        nets = {}
        for name, build in (("G", build_generator), ("G_ema", build_generator), ("D", build_discriminator)):
            nets[name] = build(config).eval().requires_grad_(False)
            nets[name].load_state_dict(state[name])
        report = {"checkpoint": str(file), "kimg": state["images_seen"] / 1000,
                  **generator_shares(nets["G_ema"], config, n, real),
                  **discriminator_gaps(nets["D"], nets["G"], config, real, 4 * n, block=block)}
        print(json.dumps(report), flush=True)
        reports.append(report)
    return reports


if __name__ == "__main__":
    from ddgan.command import prints_its_result, run_group

    run_group({"measure": prints_its_result(measure), "z-share": prints_its_result(z_share_command)},
              "python -m eval.conditioning")
