"""The space of a model: `space_for(config)` opens it and checks the config it fitted to what it opened."""

from __future__ import annotations

from pathlib import Path

from ddgan.config import Config, validate
from ddgan.spaces import Space, space_class


def space_for(config: Config, run_dir: str | Path | None = None) -> Space:
    """The space `config` diffuses. A latent one opens its autoencoder: the copy in `run_dir` when there is one,
    else the one config.autoencoder names."""
    space = space_class(config.space).open(config, run_dir)
    if space.config is not config:  # fitted to what it opened (a latent space's autoencoder): checked again
        try:
            validate(space.config)
        except ValueError as error:
            raise ValueError(space.invalid_message(error)) from None
    return space
