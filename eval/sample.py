"""`ddgan sample`: the command that draws images from a checkpoint into a grid, an array or a folder.

The sampling itself (per-seed noise, batches, uint8 conversion, grids, CUDA graphs) is the library's
`ddgan.sampling`; this file reads the flags, loads the generator and writes the output. The output
format follows `--out`: `*.png` is one grid image, `*.npz` a uint8 (N, H, W, C) array under key `x`,
anything else a folder of PNGs named by seed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval/sample.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from ddgan import checkpoint
from ddgan.data import write_image_array
from ddgan.models import load_generator
from ddgan.precision import check_amp
from ddgan.sampling import check_batch, default_device, generate, save_grid, seed_list, write_png

MAX_GRID_IMAGES = 4096  # beyond this a single PNG gets unwieldy; use a folder or an .npz
FILE_SUFFIXES = (".jpg", ".jpeg", ".npy", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pt", ".pth")


def output_kind(out: Path) -> str:
    """'grid', 'npz' or 'folder', from the form of --out."""
    suffix = out.suffix.lower()
    if suffix == ".png":
        return "grid"
    if suffix == ".npz":
        return "npz"
    if suffix in FILE_SUFFIXES:
        raise ValueError(f"--out={str(out)!r}: write a grid as *.png, an array as *.npz, or name a folder for "
                         "one PNG per seed")
    return "folder"


def check_output(out: Path, kind: str, overwrite: bool) -> None:
    """Refuse to clobber an existing file or a non-empty folder unless --overwrite."""
    if kind == "folder":
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out={str(out)!r} is an existing file, not a folder; choose another --out")
        taken = out.is_dir() and any(out.iterdir())
    else:
        if out.is_dir():
            raise ValueError(f"--out={str(out)!r} is a folder; give a file path ending in .png or .npz")
        taken = out.exists()
    if taken and not overwrite:
        what = "folder is not empty" if kind == "folder" else "file exists"
        raise ValueError(f"--out={str(out)!r}: the {what}; pass --overwrite to replace it, or choose another --out")


def sample(ckpt: str, out: str | None = None, n: int | None = None, batch: int = 64, seeds=None, device=None,
           ema: bool = True, overwrite: bool = False, preset: str | None = None, reference_config: str | None = None,
           amp: str | None = None, channels_last: bool | None = None, compile: bool = False,
           cuda_graph: bool = False) -> str:
    """Sample images from a checkpoint (file or run folder) and write them; returns the output path.

    ckpt: a ddgan checkpoint, a run folder (its newest checkpoint), or an original netG_*.pth /
        content.pth (then --preset or --reference_config gives its architecture).
    out: *.png = one grid, *.npz = uint8 (N, H, W, C) under key `x`, else a folder of <seed>.png;
        default <checkpoint folder>/samples-<checkpoint name>.png.
    n: images to draw (seeds 0..n-1) when --seeds is not given; default 64.
    seeds: a count, a range like 0-49999, or a list like 1,5,7; image i depends on its seed only.
    ema: use the EMA generator weights when the checkpoint has them.
    amp: bf16, fp16 or none; default bf16 on CUDA, full float32 on the CPU.
    channels_last: NHWC memory layout; default on for CUDA.
    compile: torch.compile the generator (pays off for many batches).
    cuda_graph: record the T-step loop once as a CUDA graph and replay it for every batch (CUDA only).
    """
    check_batch(batch)
    check_amp(amp)
    seeds = seed_list(n, seeds)
    source = checkpoint.resolve(ckpt)
    out_path = Path(out).expanduser() if out is not None else source.parent / f"samples-{source.stem}.png"
    kind = output_kind(out_path)
    if kind == "grid" and len(seeds) > MAX_GRID_IMAGES:
        raise ValueError(f"--out={str(out_path)!r}: a grid of {len(seeds)} images is too large for one PNG "
                         f"(at most {MAX_GRID_IMAGES}); write a folder or an .npz instead")
    check_output(out_path, kind, overwrite)

    device = torch.device(device) if device is not None else default_device()
    G, config = load_generator(source, ema=ema, device=device, preset=preset, reference_config_path=reference_config)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    if channels_last:
        G = G.to(memory_format=torch.channels_last)
    if compile:
        G = torch.compile(G)
    batches = generate(G, config, seeds, batch, device, amp=amp, channels_last=channels_last,
                       cuda_graph=cuda_graph)

    if kind == "folder":
        out_path.mkdir(parents=True, exist_ok=True)
        done = 0
        for images in batches:
            for seed, image in zip(seeds[done:done + len(images)], images, strict=True):
                write_png(image, out_path / f"{seed:06d}.png")
            done += len(images)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        images = np.concatenate(list(batches))
        if kind == "npz":
            write_image_array(out_path, images)
        else:
            save_grid(images, out_path)
    return str(out_path)


def main(argv: Sequence[str] | None = None) -> None:
    """`python eval/sample.py CKPT [--out ...]` is `ddgan sample CKPT [--out ...]`."""
    from ddgan.cli import run_command

    run_command("sample", sample, argv)


if __name__ == "__main__":
    main()
