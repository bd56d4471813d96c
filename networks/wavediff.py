"""Bridge to WaveDiff (VinAIResearch/WaveDiff, Phung, Dao & Tran, CVPR 2023): its configs and weights.

WaveDiff is DDGAN on wavelet tensors, and its code keeps the original DDGAN's parameter layout: the flat
`all_modules.<i>` list of the generators and the discriminators' names, which `networks.reference`
describes. It adds `convH_0` to the up blocks and bare `all_modules.<i>.weight/bias` for the wavelet input
pyramid, and runs the discriminators on their first `num_disc_layers` blocks. WaveDiff's configs are
train_wddgan.py's arguments: `image_size` is the size the networks see (half the pixel size) and
`num_channels` the wavelet channels (4 x the image channels).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import torch
import torch.nn as nn

from networks.generator import level_resolutions
from networks.reference import (
    WAVELET_DEFAULTS,
    build,
    load_reference_state_dict,
    to_reference,
    with_reference_defaults,
)

WAVEDIFF_KINDS = ("WaveletNCSNpp", "NCSNpp", "Discriminator_small", "Discriminator_large")


def _check_kind(kind: str) -> str:
    """Validate a WaveDiff network kind."""
    if kind not in WAVEDIFF_KINDS:
        raise ValueError(f"kind must be one of {WAVEDIFF_KINDS}, got {kind!r}")
    return kind


def wavediff_config(kind: str, config: Mapping | argparse.Namespace) -> tuple[str, dict]:
    """(kind to build, config for `networks.build`) of a WaveDiff network from WaveDiff's arguments."""
    kind = _check_kind(kind)
    cfg = {**WAVELET_DEFAULTS, **with_reference_defaults(config)}
    if kind.startswith("Discriminator"):
        return kind, cfg
    cfg["attn_resolutions"] = attention_that_occurs(cfg["attn_resolutions"], cfg["image_size"], cfg["patch_size"],
                                                    cfg["ch_mult"])
    if kind == "NCSNpp" and cfg["patch_size"] != 1:
        # WaveDiff's plain NCSNpp patchifies too: that is the wavelet generator with every component off.
        return "WaveletNCSNpp", {**cfg, "no_use_fbn": True, "no_use_freq": True, "no_use_residual": True}
    return kind, cfg


def attention_that_occurs(attn_resolutions, image_size: int, patch_size: int, ch_mult) -> tuple[int, ...]:
    """WaveDiff's attention resolutions without those its U-Net never has.

    Its recipes list resolutions that never occur (attention at 32 on a 16 px net means: none but the
    bottleneck's); ours refuse them, so keep only those the U-Net has.
    """
    attn = (attn_resolutions,) if isinstance(attn_resolutions, int) else tuple(attn_resolutions)
    if ch_mult is None or image_size % patch_size:
        return attn
    occurring = level_resolutions(image_size // patch_size, len(ch_mult))
    return tuple(res for res in attn if res in occurring)


def from_wavediff(kind: str, config: Mapping | argparse.Namespace,
                  state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Network of `kind` (WaveletNCSNpp, NCSNpp, Discriminator_small/large) built from WaveDiff's config and
    loaded with WaveDiff's weights (strict; a `module.` prefix is dropped)."""
    build_kind, cfg = wavediff_config(kind, config)
    return load_reference_state_dict(build_kind, build(build_kind, cfg), state_dict)


def to_wavediff(kind: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of `module` under WaveDiff's key names and layouts (the inverse of from_wavediff)."""
    return to_reference(_check_kind(kind), module)
