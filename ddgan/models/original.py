"""The Config of a checkpoint written by the original implementations (DDGAN, WaveDiff, LDDGAN), from a preset
and the flags file the original saved beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import networks
from ddgan.config import FIELD_ALIASES, Config, make_config
from ddgan.models import checkpoint


def original_config(preset: str | None = None, flags: str | os.PathLike | dict | None = None, **overrides) -> Config:
    """The Config of an original checkpoint: a preset, the original's flags (a JSON file or a dict), or both."""
    values = {}
    if isinstance(flags, dict):
        values = dict(flags)
    elif flags is not None:
        path = Path(flags)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise checkpoint.CheckpointError(f"--reference_config {path}: cannot read it as JSON ({error})") from None
    known = set(Config.__dataclass_fields__) | set(FIELD_ALIASES)
    # The original's files hold many other flags.
    raw, values = values, {k: v for k, v in values.items() if k in known}
    # The original's BigGAN blocks resample without a separate conv whatever this flag says.
    values.pop("resamp_with_conv", None)
    if "use_pytorch_wavelet" in raw:  # WaveDiff's band order, as a flag
        values["wavelet_order"] = "pytorch_wavelets" if raw["use_pytorch_wavelet"] else "bundled"
    if "current_resolution" in raw:
        values = _from_wavediff_flags(raw, values)
    if "scale_factor" in raw:
        values = _from_lddgan_flags(raw, values)
    return make_config(preset or "cifar10", **{**values, **overrides})


def _from_wavediff_flags(raw: dict, values: dict) -> dict:
    """Our settings from WaveDiff's: its files give the sizes its networks see (image_size =
    current_resolution, 4C channels) and the pixel size as ori_image_size."""
    values = {k: v for k, v in values.items() if k not in ("image_size", "num_channels")} | {"space": "wavelet"}
    if "ori_image_size" in raw:
        values["image_size"] = raw["ori_image_size"]
    if "attn_resolutions" in values and "ch_mult" in values:
        values["attn_resolutions"] = list(networks.attention_that_occurs(
            values["attn_resolutions"], raw["current_resolution"], raw.get("patch_size", 1), values["ch_mult"]))
    return values


def _from_lddgan_flags(raw: dict, values: dict) -> dict:
    """LDDGAN's flags are WaveDiff's plus its own: its networks see latents, not wavelets, its num_channels is the
    latents' (the autoencoder gives them; LDDGAN's images are RGB), scale_factor is our latent_scale, and
    --sigmoid_learning weighs the L1 term only where --rec_loss adds it."""
    values = {k: v for k, v in values.items() if k not in ("num_channels", "wavelet_order")}
    values |= {"space": "latent", "latent_scale": float(raw["scale_factor"])}
    if values.get("rec_loss") and raw.get("sigmoid_learning"):
        values["rec_loss_schedule"] = "sigmoid"
    return values


def looks_like_wavediff(state: dict) -> bool:
    """Whether an original generator state_dict is WaveDiff's: wavelet skips, or a 4C-channel input conv."""
    if any("convH_0" in key for key in state):
        return True
    convs = [v for k, v in state.items() if k.startswith(("all_modules.", "module.all_modules.")) and v.ndim == 4]
    return bool(convs) and convs[0].shape[1] in (4, 12)
