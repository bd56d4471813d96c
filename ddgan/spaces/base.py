"""What every space a model diffuses shares: the Space interface and the image-space training batch.

Each space is one object for one config: `encode` turns images in [-1, 1] into the tensor the networks see,
`decode` turns that tensor back into clamped images, `shape` is its (C, H, W) and `saved` says what a model
keeps besides its networks (`save` writes it into a run folder). Training reads the data through
`training_data` and makes each step's x_0 with `training_batch`. Spaces take the config as they find it and
never import ddgan.config, which asks them for the shapes it checks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from ddgan.runtime.distributed import Context

if TYPE_CHECKING:
    from ddgan.config import Config


class Space:
    """What every space shares: training items are images, mirrored where the step's draw says so."""

    name = ""
    card_tags: tuple[str, ...] = ()  # a model card's tags for models of this space
    diffuses = "pixels"  # what a model card says the model diffuses
    opens_autoencoder = False  # whether the space needs --autoencoder (and refuses it otherwise)
    takes_wavelet_generator = False  # whether --net_type=wavelet can run on its tensors
    original_code = "DDGAN"  # whose code trained the original checkpoints of this space (their weight layout)
    named_in_summaries = True  # whether a model's one-line summary names the space (pixels go without saying)
    # The largest batch the exported ONNX sampler is traced for (None: any).
    onnx_batch_limit: int | None = None
    augmentable = False  # whether D's inputs are images that ADA may augment

    def __init__(self, config: Config):
        self.config = config

    @classmethod
    def open(cls, config: Config, run_dir: str | Path | None = None) -> Space:
        """The space of `config` (of the model in `run_dir`, when given)."""
        return cls(config)

    @staticmethod
    def kept_config(config: Config, run_dir: str | Path) -> Config:
        """`config` as the model of a run folder (the same config, unless the space keeps files there)."""
        return config

    @staticmethod
    def check_resumed(run_dir: Path, config: Config) -> None:
        """Refuse flags given on --resume that would change what the run folder keeps (nothing to refuse)."""

    @staticmethod
    def config_problem(config: Config) -> str:
        """What in `config` this space cannot take, as the message for the user; "" when nothing."""
        return ""

    @staticmethod
    def shape_known(config: Config) -> bool:
        """Whether the config alone gives the shape the networks see (a latent one's needs its autoencoder)."""
        return True

    @staticmethod
    def model_folder_fields(values: dict) -> dict:
        """The config fields a model folder keeps, adjusted to point at what the folder holds."""
        return values

    def for_export(self) -> Space:
        """The space ready to be traced into an exported graph, on the CPU."""
        return self

    def invalid_message(self, error: ValueError) -> str:
        """The message of a config this space fitted to what it opened and validation then refused."""
        return str(error)

    @staticmethod
    def shape_of(config: Config) -> tuple[int, int, int]:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensor the networks see."""
        return self.shape_of(self.config)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one training item: an image [C, S, S]."""
        return self.config.num_channels, self.config.image_size, self.config.image_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def saved(self) -> dict:
        """What a model of this space keeps besides its networks and config."""
        return {}

    def save(self, run_dir: Path) -> None:
        """Write what `saved` names into a run folder (nothing, unless the space says otherwise)."""

    def describe(self) -> str:
        return f"{self.name} space"

    def training_data(self, dataset: Dataset, context: Context | None = None) -> tuple[Dataset, str]:
        """(what the data loader serves, a line for the run log): the images themselves."""
        return dataset, ""

    def training_batch(self, items: torch.Tensor, flipped: torch.Tensor | None,
                       randn: Callable[..., torch.Tensor]) -> torch.Tensor:
        """The step's x_0 from a batch of training items: images mirrored where `flipped` (None: no flips)."""
        if flipped is not None:
            items = torch.where(flipped.view(-1, 1, 1, 1), items.flip(3), items)
        return self.encode(items)  # mirrored as images, as WaveDiff's data loader does before its transform
