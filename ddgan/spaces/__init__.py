"""The spaces a model diffuses: pixels (DDGAN), WaveDiff's wavelet tensors, an autoencoder's latents (LDDGAN).

Each space owns every decision that depends on it (shapes, encoding, what a run folder keeps, resuming);
`space_class(name)` is the one place a space's name is looked up. `ddgan.models.space_for(config)` opens the
space of a config. The latent space's autoencoders (LDM's converted to diffusers) are in `autoencoders`, how
a run opens, keeps and caches them in `latent_store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ddgan.spaces.base import Space
from ddgan.spaces.latent import CachedPosteriors, LatentSpace
from ddgan.spaces.pixel import PixelSpace
from ddgan.spaces.wavelet import WaveletSpace

if TYPE_CHECKING:
    from ddgan.config import Config

SPACES = {space.name: space for space in (PixelSpace, WaveletSpace, LatentSpace)}


def space_class(name: str) -> type[Space]:
    """The Space subclass of `--space=NAME`."""
    return SPACES[name]


def kept_config(config: Config, run_dir: str | Path) -> Config:
    """`config` as the model of a run folder: a latent one's autoencoder is the copy kept there, when there is one."""
    return space_class(config.space).kept_config(config, run_dir)


def check_resumed_autoencoder(run_dir: Path, config: Config) -> None:
    """Refuse flags given on --resume that would change what the run folder keeps (a latent run's autoencoder)."""
    space_class(config.space).check_resumed(run_dir, config)


__all__ = ["SPACES", "CachedPosteriors", "LatentSpace", "PixelSpace", "Space", "WaveletSpace",
           "check_resumed_autoencoder", "kept_config", "space_class"]
