"""Building the networks from a Config, and loading a ready-to-sample generator from any checkpoint."""

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


def reference_config(preset: str | None = None, reference_config: str | os.PathLike | dict | None = None,
                     **overrides) -> Config:
    """The config for an original checkpoint: a preset, a JSON file or dict of the original's flags, or both."""
    values = {}
    if isinstance(reference_config, dict):
        values = dict(reference_config)
    elif reference_config is not None:
        path = Path(reference_config)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise checkpoint.CheckpointError(f"--reference_config {path}: cannot read it as JSON ({error})") from None
    known = {f for f in Config.__dataclass_fields__}
    values = {k: v for k, v in values.items() if k in known}  # the original's files hold many other flags
    return make_config(preset or "cifar10", **{**values, **overrides})


def load_generator(path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu",
                   preset: str | None = None, reference_config_path: str | os.PathLike | None = None):
    """(G in eval mode on `device`, its Config) from a ddgan checkpoint or an original netG_*.pth/content.pth."""
    file = checkpoint.resolve(path)
    obj = checkpoint.read(file)
    if checkpoint.is_ours(obj):
        obj = checkpoint.migrate(obj, file)
        config = Config.from_dict(obj["config"], f"checkpoint {file}")
        generator = build_generator(config)
        state = obj["G_ema"] if ema and obj.get("G_ema") is not None else obj["G"]
        generator.load_state_dict(state)
    elif checkpoint.is_original(obj):
        if preset is None and reference_config_path is None:
            raise checkpoint.CheckpointError(
                f"{file} is an original DDGAN checkpoint, which does not record its architecture; add "
                "--preset=cifar10 (or celeba256, lsun256) or --reference_config=FLAGS.json")
        config = reference_config(preset, reference_config_path)
        state = obj["netG_dict"] if "netG_dict" in obj else obj
        generator = networks.from_reference("NCSNpp", config.network_kwargs(), state)
    else:
        checkpoint.load(file)  # raises the "not a ddgan checkpoint" error
        raise AssertionError("unreachable")
    return generator.to(device).eval().requires_grad_(False), config
