"""Networks from a Config, a ready-to-sample generator from any checkpoint, and a checkpoint's description."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import networks
from ddgan import checkpoint
from ddgan.config import Config, make_config


def build_generator(config: Config) -> torch.nn.Module:
    """A randomly initialised NCSN++ generator for `config`."""
    return networks.build("NCSNpp", config.network_kwargs())


def build_discriminator(config: Config) -> torch.nn.Module:
    """A randomly initialised discriminator (small or large) for `config`."""
    return networks.build(config.discriminator_kind, config.network_kwargs())


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
    known = {f for f in Config.__dataclass_fields__}
    values = {k: v for k, v in values.items() if k in known}  # the original's files hold many other flags
    # The original's BigGAN blocks resample without a separate conv whatever this flag says.
    values.pop("resamp_with_conv", None)
    return make_config(preset or "cifar10", **{**values, **overrides})


def load_generator(path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu",
                   preset: str | None = None, reference_config_path: str | os.PathLike | None = None):
    """(G in eval mode on `device`, its Config) from a ddgan checkpoint or an original netG_*.pth/content.pth."""
    file = checkpoint.resolve(path)
    obj = checkpoint.load(file, original_ok=True)
    if checkpoint.is_original(obj):
        if preset is None and reference_config_path is None:
            raise checkpoint.CheckpointError(
                f"{file} is an original DDGAN checkpoint, which does not record its architecture; add "
                "--preset=cifar10 (or celeba256, lsun256) or --reference_config=FLAGS.json")
        config = original_config(preset, reference_config_path)
        state = obj["netG_dict"] if "netG_dict" in obj else obj
        generator = networks.from_reference("NCSNpp", config.network_kwargs(), state)
    else:
        config = Config.from_dict(obj["config"], f"checkpoint {file}")
        generator = build_generator(config)
        generator.load_state_dict(obj["G_ema"] if ema and obj.get("G_ema") is not None else obj["G"])
    return generator.to(device).eval().requires_grad_(False), config


def describe_checkpoint(path: str | os.PathLike) -> str:
    """A few lines about a checkpoint (`ddgan info`): what produced it and what it holds."""
    file = checkpoint.resolve(path)
    state = checkpoint.load(file)
    config = Config.from_dict(state["config"], f"checkpoint {file}")
    lines = [
        f"{file}: ddgan checkpoint format {state['version']} (ddgan {state.get('ddgan_version', '?')})",
        f"preset {config.preset}, data {config.data}, {state['images_seen'] / 1000:.2f} kimg, step {state['step']}",
        f"{config.image_size} px x {config.num_channels} ch, T={config.num_timesteps} ({config.schedule}), "
        f"nf={config.num_channels_dae}, ch_mult={list(config.ch_mult)}",
        f"G {networks.count_parameters(build_generator(config)) / 1e6:.2f} M parameters, "
        f"D {networks.count_parameters(build_discriminator(config)) / 1e6:.2f} M",
    ]
    if state.get("best_fid") is not None:
        lines.append(f"best FID {state['best_fid']:.3f}")
    return "\n".join(lines)
