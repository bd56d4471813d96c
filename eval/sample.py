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

from ddgan.data import write_image_array
from ddgan.diffusion.process import is_step_count
from ddgan.models import default_output, load_generator, resolve_source
from ddgan.runtime import distributed
from ddgan.runtime.precision import check_amp, run_precision
from ddgan.sampling import generate_shared, parse_classes, parse_seeds, readable_scale, save_grid, seed_list, write_png
from ddgan.sampling import interpolate as interpolate_images
from ddgan.sampling.fast import compiled_for_sampling
from ddgan.sampling.generate import check_batch

MAX_GRID_IMAGES = 4096  # beyond this a single PNG gets unwieldy; use a folder or an .npz


def output_kind(out: str | Path) -> str:
    """'grid', 'npz' or 'folder', from the form of --out: *.png, *.npz, or a folder: a name without an extension,
    an existing folder, or any path ending in / (so that x.v2/ can name one)."""
    text = str(out)
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".png":
        return "grid"
    if suffix == ".npz":
        return "npz"
    if not suffix or text.endswith(("/", "\\")) or path.is_dir():
        return "folder"
    raise ValueError(f"--out={text!r}: {suffix} is not written here; write a grid as *.png, an array as *.npz, or "
                     f"name a folder for one PNG per seed (without an extension, or ending in /: --out={text}/)")


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


def sample(ckpt: str, out: str | None = None, n: int | None = None, batch: int = 64, seeds=None, class_=None,
           interpolate=None, frames: int = 8, device=None, ema: bool = True, overwrite: bool = False,
           preset: str | None = None, reference_config: str | None = None, amp: str | None = None,
           channels_last: bool | None = None, compile: bool = False, cuda_graph: bool = False,
           scale: int | None = None, autoencoder: str | None = None, autoencoder_config: str | None = None,
           steps: int | None = None) -> str:
    """Sample images from a checkpoint (file or run folder) and write them; returns the output path. Under
    torchrun every process draws a share of the seeds and rank 0 writes the same output as one process would.

    ckpt: a ddgan checkpoint, a run folder (its newest checkpoint), or an original netG_*.pth /
        content.pth (then --preset or --reference_config gives its architecture; an LDDGAN one also takes
        --autoencoder, with --autoencoder_config for an LDM .ckpt, and decodes through it).
    out: *.png = one grid, *.npz = uint8 (N, H, W, C) under key `x` (class indices under `y`), else a
        folder of <seed>.png (<class>/<seed>.png for a conditional model); default
        <checkpoint folder>/samples-<checkpoint name>.png.
    n: images to draw (seeds 0..n-1) when --seeds is not given; default 64.
    seeds: a count, a range like 0-49999, or a list like 1,5,7; image i depends on its seed (and class) only.
        Under torchrun write --seeds, not --n (torchrun takes --n for an abbreviation of its --nnodes).
    class: a conditional model's class: an index (--class=3), a name (--class=cat), a list (--class=0,2)
        or --class=all (the default); with several, every seed is drawn for every class, a grid row each.
    interpolate: SEED_A,SEED_B: a row of --frames images along a spherical interpolation of the two
        seeds' noise (x_T, every z and every posterior noise), for one --class if conditional.
    ema: use the EMA generator weights when the checkpoint has them.
    amp: auto (default: bf16 on CUDA and for large networks on CPUs with native bf16), bf16, fp16 or none.
    channels_last: NHWC memory layout; default on for CUDA and for bf16 on the CPU.
    compile: torch.compile the generator, on the CPU with frozen weights (1.3x for CIFAR-10 in bf16 after a
        first call of about a minute: pays off from a few thousand images).
    cuda_graph: record the T-step loop once as a CUDA graph and replay it for every batch (CUDA only).
    scale: enlarge each image in a grid this many times (nearest); default 4x for 16 px, 1x from 32 px.
    autoencoder, autoencoder_config: the autoencoder an LDDGAN file's latents decode through (a ddgan
        checkpoint keeps its own).
    steps: denoising steps to run, 1..T (default T): fewer diffuse each x'_0 forward to the next step's input,
        as UFOGen samples in one or a few steps.
    """
    check_batch(batch)
    check_amp(amp)
    with distributed.joined(device) as context:
        return _sample(ckpt, out, n, batch, seeds, class_, interpolate, frames, context, ema, overwrite, preset,
                       reference_config, amp, channels_last, compile, cuda_graph, scale, autoencoder,
                       autoencoder_config, steps)


def _sample(ckpt, out, n, batch, seeds, class_, interpolate, frames, context: distributed.Context, ema, overwrite,
            preset, reference_config, amp, channels_last, compile, cuda_graph, scale, autoencoder=None,
            autoencoder_config=None, steps=None) -> str:
    source = resolve_source(ckpt)
    out_path = Path(out).expanduser() if out is not None else default_output(ckpt, source, "samples")
    kind = output_kind(out if out is not None else out_path)
    device = context.device
    G, config = load_generator(source, ema=ema, device=device, preset=preset, reference_config_path=reference_config,
                               autoencoder=autoencoder, autoencoder_config=autoencoder_config)
    # A conditional model's default is every class, a grid row each.
    classes = parse_classes("all" if class_ is None else class_, config) if config.num_classes else \
        parse_classes(class_, config) if class_ is not None else None
    if interpolate is not None:
        ends = _interpolation_ends(interpolate, frames, n, seeds, classes)
        labels, nrow = None if classes is None else classes * frames, frames
        stems = [f"{ends[0]:06d}-{ends[1]:06d}-{i:03d}" for i in range(frames)]
    else:
        seeds = seed_list(n, seeds)
        labels = None if classes is None else [c for c in classes for _ in seeds]
        nrow = len(seeds) if classes is not None and len(classes) > 1 else None
        stems = [f"{seed:06d}" for seed in seeds] * (len(classes) if classes else 1)
    if kind == "grid" and len(stems) > MAX_GRID_IMAGES:
        raise ValueError(f"--out={str(out_path)!r}: a grid of {len(stems)} images is too large for one PNG "
                         f"(at most {MAX_GRID_IMAGES}); write a folder or an .npz instead")
    check_output(out_path, kind, overwrite)
    if steps is not None and not is_step_count(steps, config.num_timesteps):
        raise ValueError(f"--steps must be an integer in 1..{config.num_timesteps} (the model's T), got {steps!r}")
    if steps is not None and interpolate is not None:
        raise ValueError("--interpolate draws with all T steps; leave out --steps")

    _, channels_last = run_precision(amp, device, G, channels_last)  # NHWC on CUDA and for bf16 on the CPU
    if channels_last:
        G = G.to(memory_format=torch.channels_last)
    if compile:
        G = compiled_for_sampling(G, device)
    if interpolate is not None:  # one short row: rank 0 draws it alone
        batches = iter([interpolate_images(G, config, *ends, frames=frames, label=labels[0] if labels else None,
                                           batch=batch, device=device, amp=amp)] if context.is_main else [])
    else:
        # Under torchrun every rank draws a share of each round of batches; rank 0 receives them in order.
        batches = generate_shared(G, config, seeds * (len(classes) if classes else 1), batch, context, labels=labels,
                                  amp=amp, channels_last=channels_last, cuda_graph=cuda_graph, num_steps=steps)
    if not context.is_main:
        for _ in batches:  # take part in every round's exchange; rank 0 writes
            pass
        return str(out_path)
    names = list(config.class_names) or [str(i) for i in range(config.num_classes)]
    write_images(batches, stems, labels, names, out_path, kind, nrow,
                 readable_scale(config.image_size) if scale is None else scale)
    return str(out_path)


def _interpolation_ends(interpolate, frames, n, seeds, classes) -> list[int]:
    """The two seeds of `--interpolate=A,B`, with the other flags checked."""
    if n is not None or seeds is not None:
        raise ValueError("--interpolate draws its own row of --frames images; leave out --n and --seeds")
    ends = parse_seeds(interpolate) if isinstance(interpolate, str) else [int(s) for s in interpolate] \
        if isinstance(interpolate, list | tuple) else []
    if len(ends) != 2:
        raise ValueError(f"--interpolate takes two seeds, SEED_A,SEED_B (e.g. --interpolate=3,7), got {interpolate!r}")
    if classes is not None and len(classes) != 1:
        raise ValueError("--interpolate draws one class at a time: give a single --class")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"--frames must be an integer >= 2, got {frames!r}")
    return ends


def write_images(batches, stems: list[str], labels: list[int] | None, names: list[str], out: Path, kind: str,
                 nrow: int | None, scale: int) -> None:
    """Write sampled uint8 batches as a grid PNG, an .npz (with y and classes) or a folder of <stem>.png."""
    if kind == "folder":
        out.mkdir(parents=True, exist_ok=True)
        done = 0
        for images in batches:
            for index, image in enumerate(images, start=done):
                folder = out / names[labels[index]] if labels is not None else out
                folder.mkdir(exist_ok=True)
                write_png(image, folder / f"{stems[index]}.png")
            done += len(images)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    images = np.concatenate(list(batches))
    if kind == "npz":
        if labels is None:
            write_image_array(out, images)
        else:
            write_image_array(out, images, y=np.asarray(labels, dtype=np.int64), classes=names)
    else:
        save_grid(images, out, nrow, scale)


def main(argv: Sequence[str] | None = None) -> None:
    """`python eval/sample.py CKPT [--out ...]` is `ddgan sample CKPT [--out ...]`."""
    from ddgan.command import run_command

    run_command("sample", sample, argv)


if __name__ == "__main__":
    main()
