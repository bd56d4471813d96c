"""Latent space (LDDGAN, Trinh & Hamagami 2024): the model diffuses an autoencoder's latents over a scale.

The autoencoder is opened and kept by `latent_store`; `autoencoders` turns LDM's first stages into diffusers
models. x_0 is a draw from the cached posterior of a training image's latents, over `latent_scale`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset, IterableDataset

from ddgan.runtime import distributed
from ddgan.runtime.distributed import Context
from ddgan.spaces import latent_store
from ddgan.spaces.base import Space

if TYPE_CHECKING:
    from ddgan.config import Config


class LatentSpace(Space):
    """An autoencoder's latents over `latent_scale`, as LDDGAN: x_0 = z / scale, images = decode(x * scale)."""

    name = "latent"
    card_tags = ("lddgan", "latent-diffusion")
    diffuses = "an autoencoder's latents (LDDGAN; the decoder is in autoencoder/)"
    opens_autoencoder = True
    # The wavelet network resamples its own features by Haar transforms, so it also runs on latents.
    takes_wavelet_generator = True
    original_code = "LDDGAN"  # whose generator is WaveDiff's code
    # diffusers' decoder branches on batch >= 64 to call .contiguous() (a no-op here), which torch.export refuses
    # to trace for every batch; traced below 64, the graph is the same one at any batch.
    onnx_batch_limit = 63

    @staticmethod
    def shape_known(config: Config) -> bool:
        return bool(config.latent_factor)

    @staticmethod
    def model_folder_fields(values: dict) -> dict:
        return values | {"autoencoder": latent_store.RUN_FOLDER}  # the folder keeps it as a run does

    def for_export(self) -> LatentSpace:
        """Its autoencoder on the CPU in float32, as tracing needs."""
        self.autoencoder.to("cpu").float()
        return self

    def __init__(self, config: Config, autoencoder, about: dict):
        super().__init__(config)
        self.autoencoder, self.about = autoencoder, about

    @classmethod
    def open(cls, config: Config, run_dir: str | Path | None = None) -> LatentSpace:
        """Opens the autoencoder, the copy in `run_dir` when there is one, else the one config.autoencoder names."""
        where = cls.kept_config(config, run_dir) if run_dir is not None else config
        autoencoder, about = latent_store.opened(where.autoencoder, where.autoencoder_config,
                                                 latent_store.stamp_of(where.autoencoder))
        return cls(cls.fitted(config, autoencoder, about["source"]), autoencoder, about)

    @staticmethod
    def kept_config(config: Config, run_dir: str | Path) -> Config:
        """`config` as the model of a run folder: its autoencoder is the copy kept there, when there is one."""
        kept = Path(run_dir) / latent_store.RUN_FOLDER
        if not kept.is_dir():
            return config
        return dataclasses.replace(config, autoencoder=str(kept), autoencoder_config=None)

    @staticmethod
    def fitted(config: Config, autoencoder, source: str) -> Config:
        """The config with the autoencoder's latent channels and factor, refused unless its images fit it (the rest
        of the fitted config is validated by `ddgan.models.space_for`, with `invalid_message`)."""
        channels, factor = autoencoder.latent_channels, autoencoder.downsampling_factor
        takes = autoencoder.model.config.in_channels
        if takes != config.num_channels:
            raise ValueError(f"--autoencoder={source} encodes {takes}-channel images, but --num_channels="
                             f"{config.num_channels}; pass --num_channels={takes} (images are converted)")
        if config.image_size % factor:
            below = config.image_size // factor * factor
            fits = " or ".join(str(s) for s in (below, below + factor) if s > 0)
            raise ValueError(f"--image_size={config.image_size} does not fit --autoencoder={source}, which downsamples "
                             f"{factor}x: pass a multiple of {factor}, e.g. --image_size={fits}")
        if config.latent_factor and (config.latent_channels, config.latent_factor) != (channels, factor):
            raise ValueError(f"the networks were made for {config.latent_channels}-channel latents at f="
                             f"{config.latent_factor}, but --autoencoder={source} gives {channels} at f={factor}; use "
                             "the run's own autoencoder (--latent_channels and --latent_factor are set from it: leave "
                             "them out)")
        return dataclasses.replace(config, latent_channels=channels, latent_factor=factor)

    def invalid_message(self, error: ValueError) -> str:
        channels, size, _ = self.shape
        return (f"in latent space the networks see {channels}x{size}x{size} latents (--image_size="
                f"{self.config.image_size} over the autoencoder's f={self.config.latent_factor}): {error}")

    @staticmethod
    def check_resumed(run_dir: Path, config: Config) -> None:
        """Refuse an --autoencoder given on --resume unless it is the very autoencoder the run keeps."""
        kept = Path(run_dir) / latent_store.RUN_FOLDER
        if not kept.is_dir():
            return
        info = latent_store.read_info(kept)
        source = str(config.autoencoder)
        autoencoder, _ = latent_store.opened(source, config.autoencoder_config, latent_store.stamp_of(source))
        if latent_store.weights_hash(autoencoder) != info.get("weights_sha256"):
            raise ValueError(f"--resume {run_dir}: --autoencoder={source} is not the autoencoder this run was "
                             f"trained with ({info.get('source')}, kept in {kept}); drop --autoencoder to resume with "
                             "the run's own, or start a new run")

    @staticmethod
    def shape_of(config: Config) -> tuple[int, int, int]:
        if not config.latent_factor:
            raise ValueError("the latent shape is known once the autoencoder is opened: build the space with "
                             "ddgan.models.space_for(config)")
        size = config.image_size // config.latent_factor
        return config.latent_channels, size, size

    @property
    def scale(self) -> float:
        if self.config.latent_scale is None:
            raise ValueError("the latent scale is measured when training starts; pass --latent_scale to set it")
        return float(self.config.latent_scale)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """One image's posterior views [views, P, h, w]: cat(mean, logvar) (KL) or h (VQ), mirrored image second."""
        channels, size, _ = self.shape
        views = 2 if self.config.hflip else 1
        return views, 2 * channels if self.autoencoder.kind == "kl" else channels, size, size

    @functools.cached_property
    def weights_hash(self) -> str:
        return latent_store.weights_hash(self.autoencoder)

    def _on(self, device: torch.device):
        if next(self.autoencoder.parameters()).device != device:
            self.autoencoder.to(device)
        return self.autoencoder

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean (its mode; VQ: h) over the scale: no draw, so an edit depends on its seed alone."""
        encoded = self._on(images.device).encode(images.float())
        return (encoded[0] if self.autoencoder.kind == "kl" else encoded) / self.scale

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self._on(x.device).decode(x.float() * self.scale).clamp(-1, 1)

    @property
    def saved(self) -> dict:
        return {"autoencoder": f"{latent_store.RUN_FOLDER}/ (diffusers, from {self.about['source']})",
                "latent_scale": self.config.latent_scale}

    def save(self, run_dir: Path) -> None:
        latent_store.keep_in_run(self.autoencoder, self.about, self.weights_hash, Path(run_dir))

    def describe(self) -> str:
        channels, size, _ = self.shape
        scale = "unmeasured" if self.config.latent_scale is None else f"{self.config.latent_scale:.4g}"
        tanh = ", tanh_out" if self.autoencoder.tanh_out else ""
        return (f"latent space: {channels}x{size}x{size} latents of a {self.autoencoder.kind.upper()} autoencoder "
                f"(f={self.config.latent_factor}{tanh}, from {self.about['source']}), scale {scale}")

    def training_data(self, dataset: Dataset, context: Context | None = None) -> tuple[Dataset, str]:
        """The cached posteriors of the data (encoded once, on rank 0); measures the scale when it is not set."""
        if isinstance(dataset, IterableDataset):
            raise ValueError(f"--space=latent encodes the whole dataset into a cache before training, and --data="
                             f"{self.config.data} is a stream of shards, read once per pass: train it in "
                             "--space=pixel or --space=wavelet, or convert it to a save_to_disk folder, an image "
                             "folder or an .npz, which a latent run can encode")
        context = context or Context()
        views = 2 if self.config.hflip else 1
        folder = Path(self.config.outdir).expanduser() / latent_store.CACHE_FOLDER
        found = distributed.main_only(lambda: latent_store.cached_posteriors(
            self.autoencoder, self.weights_hash, dataset, views, folder, context.device), context)
        path, what = distributed.share_from_main(found, context)
        posteriors, labels = latent_store.read_posteriors(path)
        measured = self.config.latent_scale is None
        if measured:
            scale = latent_store.latent_std(posteriors, self.autoencoder.kind)
            self.config = dataclasses.replace(self.config, latent_scale=scale)
        lines = [self.describe(), f"latent cache: {what}"]
        if measured:
            lines.append(f"latent scale {self.scale:.4g}: the std of the data's latents (LDM's scale_by_std)")
        means = posteriors[:, 0, :self.shape[0]] / self.scale
        outside = float((means.abs() > 1).float().mean())
        if outside > 0.01 and not self.config.not_use_tanh:
            lines.append(f"note: {outside:.0%} of the scaled latents lie outside [-1, 1], which G's final tanh cannot "
                         "reach; LDDGAN picks a larger --latent_scale (105 for CIFAR-10), or pass --not_use_tanh=True")
        items = CachedPosteriors(posteriors, labels, getattr(dataset, "with_labels", False), str(path))
        return items, "\n".join(lines)

    def training_batch(self, items: torch.Tensor, flipped: torch.Tensor | None,
                       randn: Callable[..., torch.Tensor]) -> torch.Tensor:
        """x_0 = z / scale, z drawn from the (mirrored image's, where `flipped`) posterior with the step's stream."""
        view = items[:, 0] if flipped is None else torch.where(flipped.view(-1, 1, 1, 1), items[:, 1], items[:, 0])
        if self.autoencoder.kind == "vq":
            return view / self.scale
        mean, logvar = view.chunk(2, dim=1)
        return (mean + torch.exp(0.5 * logvar) * randn(*mean.shape)) / self.scale


class CachedPosteriors(Dataset):
    """A latent run's training items: image i's posterior views [views, P, h, w] (and its label)."""

    def __init__(self, posteriors: torch.Tensor, labels: torch.Tensor | None, with_labels: bool, name: str):
        if with_labels and labels is None:
            raise ValueError(f"{name} holds no class labels; delete it, and the next run encodes the data again")
        self.posteriors, self.labels, self.with_labels, self.name = posteriors, labels, with_labels, name

    def __len__(self) -> int:
        return len(self.posteriors)

    def __getitem__(self, index: int):
        item = self.posteriors[index]
        return (item, int(self.labels[index])) if self.with_labels else item
