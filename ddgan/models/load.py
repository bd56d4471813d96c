"""A ready-to-sample generator from anything a user may point at: a checkpoint or run folder, a model folder or
Hub id, an original DDGAN / WaveDiff / LDDGAN generator file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

import networks
from ddgan.config import Config
from ddgan.models import checkpoint, model_folder
from ddgan.models.build import build_generator
from ddgan.models.original import looks_like_wavediff, original_config
from ddgan.models.space import space_for
from ddgan.spaces import kept_config, space_class


def load_generator(path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu",
                   preset: str | None = None, reference_config_path: str | os.PathLike | None = None,
                   autoencoder: str | None = None, autoencoder_config: str | None = None):
    """(G in eval mode on `device`, its Config) from a ddgan checkpoint or run folder, a model folder (local or a
    Hub id, `ddgan export`'s), or an original DDGAN, WaveDiff or LDDGAN netG_*.pth / content.pth (whose
    architecture --preset or --reference_config gives; an LDDGAN file also needs the --autoencoder, and its
    --autoencoder_config, that it was trained on)."""
    folder = model_folder.locate(path)
    if folder is not None:
        if not ema:
            raise ValueError(f"{path} is a model folder, which holds the EMA generator only; drop --ema=False")
        return model_folder.read(folder, device)
    file = checkpoint.resolve(path)
    obj = checkpoint.load(file, original_ok=True)
    if checkpoint.is_original(obj):
        state = obj["netG_dict"] if "netG_dict" in obj else obj
        wavediff = looks_like_wavediff(state)
        if preset is None and reference_config_path is None:
            raise checkpoint.CheckpointError(
                f"{file} is an original {'WaveDiff' if wavediff else 'DDGAN'} checkpoint, which does not record its "
                f"architecture; add --preset={'cifar10_wavelet' if wavediff else 'cifar10'} (or "
                f"{'stl10_wavelet, celeba256_wavelet, lsun256_wavelet' if wavediff else 'celeba256, lsun256'}) or "
                "--reference_config=FLAGS.json (an LDDGAN file: a latent preset such as cifar10_latent with "
                "--autoencoder)")
        # Only latent configs take an autoencoder: passing None to the others keeps their own checks' wording.
        latent = {k: v for k, v in (("autoencoder", autoencoder), ("autoencoder_config", autoencoder_config))
                  if v is not None}
        config = original_config(preset, reference_config_path, **latent)
        # A latent model's shape (and so its generator's) is its autoencoder's, known once that is open.
        config = space_for(config).config
        original_code = space_class(config.space).original_code
        if wavediff and original_code == "DDGAN":
            raise checkpoint.CheckpointError(
                f"{file} is a WaveDiff checkpoint (its generator takes wavelet tensors), but --preset={config.preset} "
                "is a pixel-space recipe; use a wavelet preset (cifar10_wavelet, stl10_wavelet, celeba256_wavelet, "
                "lsun256_wavelet) or a config with space wavelet (an LDDGAN file: a latent preset such as "
                "cifar10_latent with --autoencoder)")
        # LDDGAN's generator is WaveDiff's code, so its weights convert the same way.
        convert = networks.from_reference if original_code == "DDGAN" else networks.from_wavediff
        generator = convert(config.generator_kind, config.network_kwargs(), state)
    else:
        # A latent model decodes with the autoencoder its run folder keeps, wherever the folder has moved.
        config = kept_config(Config.from_dict(obj["config"], f"checkpoint {file}"), file.parent)
        generator = build_generator(config)
        generator.load_state_dict(obj["G_ema"] if ema and obj.get("G_ema") is not None else obj["G"])
    return generator.to(device).eval().requires_grad_(False), config


def resolve_source(path: str | os.PathLike) -> Path:
    """What a command's CKPT names: a model folder (a Hub id fetched into the Hub cache) or a checkpoint file."""
    return model_folder.locate(path) or checkpoint.resolve(path)


def default_output(ckpt: str | os.PathLike, source: Path, prefix: str, suffix: str = ".png") -> Path:
    """Where a command writes by default: beside a checkpoint, or in the working folder for a model folder, whose
    files are the model's alone (and may lie in the Hub cache)."""
    if source.is_dir():
        name = re.sub(r"[^\w.-]+", "_", str(ckpt).strip("/\\")) or source.name
        return Path.cwd() / f"{prefix}-{name}{suffix}"
    return source.parent / f"{prefix}-{source.stem}{suffix}"
