"""Adaptive discriminator augmentation (ADA, Karras et al., NeurIPS 2020) for DDGAN's pairs.

D judges pairs (x_t, x_{t+1}); an augmentation must keep a pair a pair, so both of its images get the same
transform, and real and fake pairs are augmented alike (each pair its own draw), so that G learns the data and
not the augmentations. Each transform applies to a pair with probability p. They are the ones ADA found to pay
on small data sets and that need no resampling: mirroring, rotations by quarter turns, integer translations
(reflected at the border), and brightness, contrast and saturation. Each is invertible in distribution while p
stays below 1; ADA measured leaks (G drawing augmented images) from about p = 0.8, so p stops there.

p follows D's overconfidence: every INTERVAL D steps, r_t = E[sign(D's real logits)] (under the relativistic
loss, of real minus fake) over those steps and all ranks, and p moves by `batch * INTERVAL / (speed_kimg * 1000)`
toward raising r_t to `target` (ADA's 0.6): up when D tells real from fake too well, down otherwise.
"""

from __future__ import annotations

import math

import torch

from ddgan.runtime import distributed
from ddgan.runtime.distributed import Context

INTERVAL = 4  # D steps between adjustments of p (ADA's)
MAX_P = 0.8  # ADA's measured onset of leaking: the augmentations stay recognisable as such below it
TRANSLATE = 0.125  # the largest translation, as a share of the image size (ADA's)
BRIGHTNESS_STD = 0.2  # ADA's, in [-1, 1] units as ADA's images
CONTRAST_STD = 0.5  # of log2 of the contrast factor (ADA's)
SATURATION_STD = 1.0  # of log2 of the saturation factor (ADA's)
LUMA = (0.299, 0.587, 0.114)


class AdaptiveAugment:
    """The augmentation probability p, its adjustment from D's outputs, and the augmentation of pairs."""

    def __init__(self, target: float, speed_kimg: float, batch_images: int, context: Context | None = None):
        self.target, self.speed_kimg, self.batch_images = target, speed_kimg, batch_images
        self.context = context or Context()
        self.p = 0.0
        # (sum of signs, count) since the last adjustment, kept where the logits are: read once an adjustment.
        self.signs = torch.zeros(2, dtype=torch.float64, device=self.context.device)
        self.steps = 0
        self.last_rt = math.nan

    def observe(self, evidence: torch.Tensor) -> None:
        """Accumulate one D step's evidence: the logits whose sign says D calls a real pair real."""
        self.signs[0] += torch.sign(evidence.detach().float()).sum().to(self.signs)
        self.signs[1] += evidence.numel()
        self.steps += 1
        if self.steps % INTERVAL == 0:
            self.adjust()

    def adjust(self) -> None:
        """Move p toward r_t = target (every rank alike: the sums are added over ranks)."""
        total = distributed.sum_over_ranks(self.signs, self.context).cpu()
        self.signs.zero_()
        if total[1] == 0:
            return
        self.last_rt = float(total[0] / total[1])
        step = self.batch_images * INTERVAL / (self.speed_kimg * 1000)
        direction = 1.0 if self.last_rt > self.target else -1.0 if self.last_rt < self.target else 0.0
        self.p = min(max(self.p + direction * step, 0.0), MAX_P)

    def state_dict(self) -> dict:
        return {"p": self.p, "signs": self.signs.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.steps = float(state["p"]), int(state["steps"])
        self.signs = state["signs"].to(self.signs.device, torch.float64).clone()

    def augment(self, x: torch.Tensor, x_next: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs (x, x_next) [B, C, H, W] with each pair's transform applied to both of its images."""
        return augment_pairs(x, x_next, self.p, generator)


def augment_pairs(x: torch.Tensor, x_next: torch.Tensor, p: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images of each pair through the same random transforms, each applied with probability p.

    The draws come from `generator` whatever p is (a resumed run draws what the uninterrupted one did); with
    p = 0 the pairs come back unchanged.
    """
    batch, channels, height, width = x.shape
    pairs = torch.stack([x, x_next], dim=1).float()  # [B, 2, C, H, W]
    device = x.device

    def uniform(*shape) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    def normal(*shape) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    def applies() -> torch.Tensor:
        return uniform(batch) < p

    # Geometric: one map of output to input pixels per pair.
    flip = applies() & (uniform(batch) < 0.5)
    quarter_turns = torch.where(applies(), torch.floor(uniform(batch) * 4), torch.zeros(batch, device=device))
    shift = torch.where(applies()[:, None], torch.round((uniform(batch, 2) * 2 - 1) * TRANSLATE * height),
                        torch.zeros(batch, 2, device=device))
    pairs = _remap(pairs, flip, quarter_turns.long(), shift.long())
    # Colour: the same factors for both images of a pair, each image about its own mean.
    # (Where a transform does not apply, the pair is left as it was, bit for bit.)
    view = (-1, 1, 1, 1, 1)
    brightness, brightened = normal(batch) * BRIGHTNESS_STD, applies().view(view)
    contrast, contrasted = torch.exp2(normal(batch) * CONTRAST_STD).view(view), applies().view(view)
    saturation, saturated = torch.exp2(normal(batch) * SATURATION_STD).view(view), applies().view(view)
    pairs = torch.where(brightened, pairs + brightness.view(view), pairs)
    mean = pairs.mean(dim=(2, 3, 4), keepdim=True)
    pairs = torch.where(contrasted, (pairs - mean) * contrast + mean, pairs)
    if channels == 3:
        luma = (pairs * torch.tensor(LUMA, device=device).view(1, 1, 3, 1, 1)).sum(2, keepdim=True)
        pairs = torch.where(saturated, (pairs - luma) * saturation + luma, pairs)
    out = pairs.to(x.dtype)
    return out[:, 0], out[:, 1]


def _remap(pairs: torch.Tensor, flip: torch.Tensor, quarter_turns: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Pairs [B, 2, C, S, S] mirrored, turned by quarter turns and shifted by whole pixels (reflected at the
    border), each pair by its own amounts; a gather, so gradients flow to the input pixels."""
    batch, _, _, size, width = pairs.shape
    if size != width:
        raise ValueError(f"augmentation by quarter turns needs square images, got {size}x{width}")
    index = torch.arange(size, device=pairs.device)
    rows, cols = index.view(1, size, 1).expand(batch, size, size), index.view(1, 1, size).expand(batch, size, size)
    # Output pixel (r, c) reads input pixel: shift, then turn, then mirror (the inverse, in reverse order).
    rows, cols = _reflect(rows - shift[:, 0].view(-1, 1, 1), size), _reflect(cols - shift[:, 1].view(-1, 1, 1), size)
    k = quarter_turns.view(-1, 1, 1) % 4
    last = size - 1
    turned_rows = torch.where(k == 0, rows, torch.where(k == 1, cols, torch.where(k == 2, last - rows, last - cols)))
    turned_cols = torch.where(k == 0, cols, torch.where(k == 1, last - rows, torch.where(k == 2, last - cols, rows)))
    turned_cols = torch.where(flip.view(-1, 1, 1), last - turned_cols, turned_cols)
    source = (turned_rows * size + turned_cols).view(batch, 1, 1, size * size)
    flat = pairs.flatten(3)
    gathered = torch.gather(flat, 3, source.expand(batch, flat.shape[1], flat.shape[2], size * size))
    return gathered.view(pairs.shape)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices reflected into 0..size-1 (..., 1, 0, 0, 1, ... at the border: the edge pixel repeated, as
    symmetric padding)."""
    period = 2 * size
    index = index % period
    return torch.where(index < size, index, period - 1 - index)
