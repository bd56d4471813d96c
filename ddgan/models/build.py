"""Randomly initialised networks for a Config: the generator and the discriminator it names."""

from __future__ import annotations

import torch

import networks
from ddgan.config import Config


def build_generator(config: Config) -> torch.nn.Module:
    """A randomly initialised generator for `config`: NCSN++, or WaveDiff's wavelet NCSN++ (--net_type=wavelet)."""
    return networks.build(config.generator_kind, config.network_kwargs())


def build_discriminator(config: Config) -> torch.nn.Module:
    """A randomly initialised discriminator (small or large) for `config`."""
    return networks.build(config.discriminator_kind, config.network_kwargs())
