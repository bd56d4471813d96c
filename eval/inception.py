"""clean-fid's Inception feature extractors, their weights found on disk (or fetched once), and features of batches.

clean-fid downloads what it needs the first time; offline, every missing file is reported up front with its
name, the folder it belongs in and the URL to fetch it from on another machine. `batch_features` runs one
batch of uint8 images through clean-fid's own resizing and quantisation for the chosen mode, so features
are those clean-fid computes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ddgan.runtime.distributed import default_device
from ddgan.runtime.files import atomic_write

MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's TorchScript Inception (clean, legacy_tensorflow)
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's weights (legacy_pytorch)
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
DOWNLOAD_TIMEOUT_S = 30
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]  # float (B, 3, 299, 299) in [0, 255] -> (B, D)


class MissingFileError(FileNotFoundError):
    """A file FID needs (Inception weights, reference statistics) that is absent and could not be fetched."""


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")


# ---------------------------------------------------------------------------------------------------------
# Files clean-fid would download


def download(url: str, path: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch `url` into `path` via a temporary file, so an interrupted download leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        atomic_write(path, lambda f: shutil.copyfileobj(response, f, 1 << 20))


def fetch(path: Path, url: str, what: str, allow_download: bool, hint: str = "") -> Path:
    """`path` if it exists, else download it from `url` (if allowed), else a MissingFileError saying what to do."""
    if path.is_file():
        return path
    reason = "downloading is off"
    if allow_download:
        print(f"downloading {what} from {url} to {path}", file=sys.stderr)
        try:
            download(url, path)
            return path
        except (OSError, ValueError) as error:  # URLError and timeouts are OSErrors
            reason = f"the download failed: {error}"
    raise MissingFileError(f"{what} not found: {path} does not exist and {reason}. Fetch {url} on a machine with "
                           f"internet access and place it at {path}{hint}")


def cleanfid_inception_folder() -> Path:
    """Where clean-fid itself keeps the TorchScript Inception weights (a fixed folder it chooses)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def inception_path(inception: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The TorchScript Inception weights: --inception, else $DDGAN_INCEPTION, else clean-fid's cache folder."""
    given = inception or os.environ.get("DDGAN_INCEPTION")
    if given:
        path = Path(given).expanduser()
        path = path / INCEPTION_FILE if path.is_dir() else path
        if not path.is_file():
            raise MissingFileError(f"--inception / $DDGAN_INCEPTION points at {path}, which does not exist; fetch "
                                   f"{INCEPTION_URL} and give the path of {INCEPTION_FILE}")
        return path
    hint = " (or anywhere, then pass --inception=PATH or set DDGAN_INCEPTION=PATH)"
    return fetch(cleanfid_inception_folder() / INCEPTION_FILE, INCEPTION_URL, f"Inception weights {INCEPTION_FILE}",
                 allow_download, hint)


@contextlib.contextmanager
def folder_holding(path: Path, name: str) -> Iterator[Path]:
    """A folder in which `name` is the file `path`: its own folder, or a temporary one with a link to it."""
    if path.name == name:
        yield path.parent
        return
    with tempfile.TemporaryDirectory(prefix="ddgan-fid-") as folder:
        os.symlink(path.resolve(), Path(folder) / name)
        yield Path(folder)


def pytorch_fid_path(inception: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """pytorch-fid's Inception weights (legacy_pytorch): --inception, $DDGAN_INCEPTION, or torch.hub's cache."""
    given = inception or os.environ.get("DDGAN_INCEPTION")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise MissingFileError(f"--inception / $DDGAN_INCEPTION points at {path}, which does not exist; "
                                   f"--mode=legacy_pytorch needs {PYTORCH_FID_FILE} from {PYTORCH_FID_URL}")
        return path
    return fetch(Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE, PYTORCH_FID_URL,
                 f"pytorch-fid Inception weights {PYTORCH_FID_FILE}", allow_download,
                 " (torch.hub's cache; $TORCH_HOME moves it) or pass --inception=PATH")


def inception_extractor(mode: str = "clean", device=None, inception: str | os.PathLike | None = None,
                        allow_download: bool = True) -> FeatureExtractor:
    """clean-fid's Inception feature extractor for `mode`, with its weights found (or fetched) first."""
    check_mode(mode)
    device = default_device(device)
    find = pytorch_fid_path if mode == "legacy_pytorch" else inception_path
    return load_extractor(mode, device, find(inception, allow_download))


@functools.lru_cache(maxsize=1)  # training evaluates FID again and again: load Inception once
def load_extractor(mode: str, device: torch.device, weights: Path) -> FeatureExtractor:
    """Build clean-fid's extractor from weights known to be on disk, so nothing is downloaded."""
    from cleanfid.features import build_feature_extractor
    from cleanfid.inception_torchscript import InceptionV3W

    if mode == "legacy_pytorch":
        with hub_holding(weights):  # clean-fid loads these through torch.hub's cache
            return build_feature_extractor(mode, device, use_dataparallel=False)
    with folder_holding(weights, INCEPTION_FILE) as folder:
        model = InceptionV3W(str(folder), download=False, resize_inside=mode == "legacy_tensorflow")
    return model.to(device).eval()


@contextlib.contextmanager
def hub_holding(weights: Path) -> Iterator[None]:
    """Point torch.hub's cache at `weights` for the duration, unless it is already the cached file."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE
    if cached.is_file() and cached.resolve() == weights.resolve():
        yield
        return
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="ddgan-hub-") as folder:
        (Path(folder) / "checkpoints").mkdir()
        os.symlink(weights.resolve(), Path(folder) / "checkpoints" / PYTORCH_FID_FILE)
        torch.hub.set_dir(folder)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


def batch_features(images: np.ndarray, extractor: FeatureExtractor, mode: str, device) -> np.ndarray:
    """Features (B, D) of one uint8 (B, H, W, C) batch, resized and fed to the extractor as clean-fid does."""
    from cleanfid.fid import get_model_features

    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if batch.shape[1] == 1:  # Inception sees RGB; grayscale is replicated, as PIL's convert('RGB') does
        batch = batch.expand(-1, 3, -1, -1)
    batch = batch.contiguous()
    # clean-fid draws (unused) latents from the global RNG; keep the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        return get_model_features(lambda z: batch, extractor, mode=mode, z_dim=1, num_gen=len(batch),
                                  batch_size=len(batch), device=device, verbose=False)
