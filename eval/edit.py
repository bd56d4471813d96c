"""`ddgan edit`: add noise to images, then denoise them with the model (the paper's Figure 8, SDEdit-style).

Each input is resized and center-cropped as training does, encoded into the space the model diffuses (a
latent model's autoencoder encodes it first), diffused to step k with q (seeded per image), and run through
the k remaining denoising steps: k = T ignores the input (plain sampling of the seed),
k = 1 keeps most of it. A grid output shows the inputs in the first row and their edits below.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval/edit.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from ddgan.config import Config
from ddgan.data import ImageDataset, open_dataset
from ddgan.data.sources import IMAGE_EXTENSIONS, READ_ERRORS, ArraySource, decode_image
from ddgan.models import default_output, load_generator, resolve_source
from ddgan.runtime.distributed import default_device
from ddgan.runtime.precision import check_amp
from ddgan.sampling import edit as edit_images
from ddgan.sampling import parse_classes, parse_seeds, readable_scale, to_uint8
from ddgan.sampling.generate import check_batch
from eval.sample import check_output, output_kind, write_images


def open_inputs(path: str, config: Config) -> ImageDataset:
    """The images to edit at the model's size and channels: one image file, or a folder / .zip / .npz of them."""
    location = Path(str(path)).expanduser()
    if location.is_file() and location.suffix.lower() in IMAGE_EXTENSIONS:
        try:
            image = decode_image(location).convert("RGB" if config.num_channels == 3 else "L")
        except READ_ERRORS as error:
            raise ValueError(f"--input={path}: cannot read it as an image ({error}); give a PNG/JPEG file, a folder "
                             "of images or a .npz") from None
        pixels = np.asarray(image)
        source = ArraySource((pixels if pixels.ndim == 3 else pixels[..., None])[None], name=str(location))
        return ImageDataset(source, config.image_size, config.num_channels)
    try:
        return open_dataset(str(location), config.image_size, config.num_channels)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"--input={path}: {error}") from None


def edit(ckpt: str, input: str, start_step: int, out: str | None = None, class_=None, seeds=None,
         batch: int = 64, device=None, ema: bool = True, overwrite: bool = False, amp: str | None = None,
         preset: str | None = None, reference_config: str | None = None, scale: int | None = None,
         autoencoder: str | None = None, autoencoder_config: str | None = None) -> str:
    """Edit images with a checkpoint: diffuse them to --start_step=k, then denoise; returns the output path.

    input: an image file, a folder / .zip of images, or a .npz (uint8 `x`), resized as training does.
    start_step: k in 1..T: how far the inputs are diffused before the k remaining steps denoise them
        (T ignores the input, 1 keeps most of it).
    out: *.png = the inputs above their edits, *.npz = the edits under `x`, else a folder of <seed>.png;
        default <checkpoint folder>/edit-k<k>-<checkpoint name>.png.
    class: a conditional model's class for every image (index or name), or one per image (--class=0,2,...).
    seeds: one per input image (default 0..N-1): image i is diffused and denoised with seed i's noise.
    autoencoder, autoencoder_config: the autoencoder of an LDDGAN netG_*.pth / content.pth (with a latent
        --preset); a ddgan checkpoint keeps its own.
    """
    check_batch(batch)
    check_amp(amp)
    source = resolve_source(ckpt)
    out_path = Path(out).expanduser() if out is not None else default_output(ckpt, source, f"edit-k{start_step}")
    kind = output_kind(out if out is not None else out_path)
    check_output(out_path, kind, overwrite)
    device = default_device(device)
    G, config = load_generator(source, ema=ema, device=device, preset=preset, reference_config_path=reference_config,
                               autoencoder=autoencoder, autoencoder_config=autoencoder_config)
    dataset = open_inputs(input, config)
    images = torch.stack([dataset[i] for i in range(len(dataset))])
    seeds = parse_seeds(seeds) if seeds is not None else list(range(len(images)))
    labels = None
    if class_ is not None:
        classes = parse_classes(class_, config)
        if len(classes) not in (1, len(images)):
            raise ValueError(f"--class lists {len(classes)} classes for {len(images)} images; give one for all or "
                             "one per image")
        labels = classes * len(images) if len(classes) == 1 else classes
    batches = list(edit_images(G, config, images, seeds, start_step, labels=labels, batch=batch, device=device,
                               amp=amp))
    names = list(config.class_names) or [str(i) for i in range(config.num_classes)]
    scale = readable_scale(config.image_size) if scale is None else scale
    if kind == "grid":
        originals = to_uint8(images).permute(0, 2, 3, 1).numpy()
        write_images([originals, *batches], [""] * (2 * len(images)), None, names, out_path, kind, len(images), scale)
    else:
        write_images(batches, [f"{seed:06d}" for seed in seeds], labels, names, out_path, kind, None, scale)
    return str(out_path)


def main(argv: Sequence[str] | None = None) -> None:
    """`python eval/edit.py CKPT --input=... --start_step=k` is `ddgan edit CKPT ...`."""
    from ddgan.command import run_command

    run_command("edit", edit, argv)


if __name__ == "__main__":
    main()
