"""`ddgan export`: a trained generator as a model folder with its model card, or the whole sampler as ONNX.

`ddgan export RUN --out=DIR` writes the folder that `ddgan.models.model_folder` reads (and every command that takes
a checkpoint, and `ddgan.from_pretrained`); `--format=onnx --out=sampler.onnx` writes the T-step sampler as
one ONNX graph (`ddgan.export.onnx`), whose inputs for given seeds `onnx_inputs` returns.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import torch

from ddgan.config import Config
from ddgan.models import checkpoint, model_folder
from ddgan.models.describe import generator_sizes
from ddgan.models.model_folder import DTYPES
from ddgan.sampling import default_steps, generate, grid_image, grid_layout, readable_scale, write_png
from ddgan.spaces import space_class

FORMATS = ("folder", "onnx")


def __getattr__(name: str):
    """`ddgan.export.onnx_inputs`: the ONNX sampler's inputs for seeds, imported when first asked for."""
    if name == "onnx_inputs":
        from ddgan.export.onnx import onnx_inputs

        return onnx_inputs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
CARD_GRID_IMAGES = 64
METRICS = ("fid", "precision", "recall", "density", "coverage")


def export(ckpt: str, out: str, format: str = "folder", dtype: str = "float32", license: str | None = None,
           overwrite: bool = False, preset: str | None = None, reference_config: str | None = None,
           autoencoder: str | None = None, autoencoder_config: str | None = None, grid_images: int = CARD_GRID_IMAGES,
           opset: int | None = None) -> str:
    """Export a model to share or deploy: a model folder (config.json, model.safetensors, model card) or the sampler
    as one ONNX graph; prints where.

    ckpt: a run folder (its newest checkpoint), a ddgan checkpoint, a model folder or Hub id, or an original
        netG_*.pth / content.pth with --preset (and an LDDGAN one with --autoencoder).
    out: the model folder to write (--format=folder), or the .onnx file (--format=onnx); an existing one is
        refused unless --overwrite.
    dtype: the weights' dtype in model.safetensors: float32 (exact), bfloat16 or float16 (half the size).
    license: a license id for the card's front matter (e.g. mit, cc-by-nc-4.0); left out when not given.
    grid_images: images in the card's sample grid (samples.png).
    opset: the ONNX opset (--format=onnx; default: the exporter's).
    """
    from ddgan.models import load_generator

    if format not in FORMATS:
        raise ValueError(f"--format={format}: expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype}: offered are {', '.join(DTYPES)}")
    if format == "onnx" and dtype != "float32":
        raise ValueError("--dtype applies to model folders; an ONNX sampler is exported in float32")
    target = Path(out).expanduser()
    if format == "onnx":
        if target.suffix.lower() != ".onnx":
            raise ValueError(f"--out={out}: an ONNX sampler is one file; name it *.onnx")
        if target.exists() and not overwrite:
            raise ValueError(f"--out={out} exists; pass --overwrite to replace it, or choose another --out")
    else:
        model_folder.check_out(target, overwrite)
    G, config = load_generator(ckpt, preset=preset, reference_config_path=reference_config,
                               autoencoder=autoencoder, autoencoder_config=autoencoder_config)
    bad = [name for name, p in G.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"{ckpt}: cannot export: the generator's weights are not finite ({', '.join(bad[:4])}); "
                         "export an earlier checkpoint of the run")
    if format == "onnx":
        from ddgan.export.onnx import export_onnx

        path = export_onnx(G, config, target, opset=opset)
        print(path)
        return str(path)
    trained = training_record(ckpt)
    written = model_folder.write(
        G, config, target, dtype=dtype, trained=trained, overwrite=overwrite,
        extras=lambda staging: write_card(staging, G, config, trained, license, grid_images, target.name))
    print(written)
    return str(written)


def training_record(ckpt: str) -> dict:
    """What the card says about training: data, kimg, step and the last metrics the run logged (when known)."""
    folder = model_folder.locate(ckpt)
    if folder is not None:  # re-exporting a model folder keeps its record
        return model_folder.read_about(folder).get("trained", {})
    try:
        file = checkpoint.resolve(ckpt)
        state = checkpoint.load(file, original_ok=True)
    except (checkpoint.CheckpointError, OSError):
        return {}
    if checkpoint.is_original(state):
        return {"source": f"original checkpoint {file.name}"}
    record = {"data": state["config"].get("data"), "kimg": round(state["images_seen"] / 1000, 3),
              "step": state.get("step"), "checkpoint": file.name}
    log = file.parent / "log.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "fid" in entry:
                record["metrics"] = {k: entry[k] for k in METRICS if k in entry} | {"at_kimg": entry.get("kimg")}
    return record


def write_card(folder: Path, G: torch.nn.Module, config: Config, trained: dict, license: str | None,
               grid_images: int, folder_name: str) -> None:
    """README.md (the Hub's model card: YAML front matter, then what the model is and how to sample it) and the
    sample grid it shows."""
    seeds, labels, columns = grid_layout(config, grid_images)
    images = np.concatenate(list(generate(G, config, seeds, batch=min(64, len(seeds)), progress=False,
                                          labels=labels)))
    write_png(grid_image(images, columns or math.ceil(math.sqrt(len(seeds))), readable_scale(config.image_size)),
              folder / model_folder.GRID_FILE)
    (folder / model_folder.CARD_FILE).write_text(card_text(config, trained, license, folder_name), encoding="utf-8")


def card_text(config: Config, trained: dict, license: str | None, folder_name: str) -> str:
    """The model card's Markdown; its usage names the folder by its own name (never a path of the exporting
    machine) or by a Hub id placeholder."""
    tags = ["ddgan", "denoising-diffusion-gan", "gan", "diffusion"]
    space = space_class(config.space)
    tags += list(space.card_tags)
    tags += ["class-conditional"] if config.num_classes else []
    front = ["---", "library_name: ddgan", "pipeline_tag: unconditional-image-generation", "tags:"]
    front += [f"- {tag}" for tag in tags] + ([f"license: {license}"] if license else []) + ["---", ""]
    where = shlex.quote(folder_name)
    kind = space.diffuses
    sampled = f", sampled in {config.sample_steps} of them" if default_steps(config) else ""
    lines = [f"# DDGAN: {config.preset}, {config.image_size} px", "",
             f"A Denoising Diffusion GAN (Xiao, Kreis & Vahdat, ICLR 2022) that draws {config.image_size}x"
             f"{config.image_size} images with {config.num_channels} channel(s) in T = {config.num_timesteps} "
             f"denoising steps ({config.schedule} schedule){sampled}, diffusing {kind}. Generator: "
             f"{generator_sizes(config)}, nz {config.nz}. "
             "Exported with `ddgan export`; the weights are the EMA generator's.", ""]
    if config.num_classes:
        lines += [f"Class-conditional: {config.num_classes} classes ({', '.join(config.class_names)}); "
                  "`--class=NAME` picks one.", ""]
    lines += ["## Training", ""]
    if trained.get("data") is not None:
        lines.append(f"- data: `{trained['data']}`")
    if trained.get("kimg") is not None:
        steps = f" ({trained['step']} iterations)" if trained.get("step") is not None else ""
        lines.append(f"- {trained['kimg']} thousand images seen{steps}")
    if trained.get("source"):
        lines.append(f"- converted from the {trained['source']}")
    metrics = trained.get("metrics")
    if metrics:
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in METRICS if k in metrics)
        lines.append(f"- last evaluation logged during training (at {metrics.get('at_kimg')} kimg): {shown}")
    else:
        lines.append("- no FID was logged during training (train with --fid_every to record one)")
    lines += ["", "## Samples", "", f"![samples]({model_folder.GRID_FILE})", "",
              "Seeds 0 and up" + (", one row per class." if config.num_classes else "."), "",
              "## Use", "", f"With the ddgan package installed, beside the folder `{folder_name}` (or with its Hub id "
              f"`OWNER/{folder_name}` in its place once it is uploaded):", "", "```bash",
              f"ddgan sample {where} --seeds=0-15 --out=samples.png",
              f"ddgan export {where} --format=onnx --out=sampler.onnx   # deploy with ONNX Runtime", "```", "",
              "```python", "import ddgan", "from ddgan.sampling import generate", "",
              f"G, config = ddgan.from_pretrained({folder_name!r})  # or 'OWNER/{folder_name}' on the Hub",
              (f"images = next(generate(G, config, range(16), labels={(config.class_names or ['0'])[0]!r}))"
               "  # uint8 [16, H, W, C]" if config.num_classes else
               "images = next(generate(G, config, range(16)))  # uint8 [16, H, W, C]"), "```", ""]
    return "\n".join(front + lines)

