"""`ddgan info`: a checkpoint's or model folder's description, a few lines."""

from __future__ import annotations

import os

import networks
from ddgan.config import Config
from ddgan.models import checkpoint, model_folder
from ddgan.models.build import build_discriminator, build_generator
from ddgan.models.space import space_for
from ddgan.spaces import kept_config, space_class


def describe_checkpoint(path: str | os.PathLike) -> str:
    """A few lines about a checkpoint (`ddgan info`): what produced it and what it holds."""
    folder = model_folder.locate(path)
    if folder is not None:
        return describe_model_folder(folder)
    file = checkpoint.resolve(path)
    state = checkpoint.load(file)
    config = kept_config(Config.from_dict(state["config"], f"checkpoint {file}"), file.parent)
    lines = [
        f"{file}: ddgan checkpoint format {state['version']} (ddgan {state.get('ddgan_version', '?')})",
        f"preset {config.preset}, data {config.data}, {state['images_seen'] / 1000:.2f} kimg, step {state['step']}",
        _model_line(config),
        f"G {networks.count_parameters(build_generator(config)) / 1e6:.2f} M parameters, "
        f"D {networks.count_parameters(build_discriminator(config)) / 1e6:.2f} M",
    ]
    if objective := _objective_line(config):
        lines.append(objective)
    if state.get("best_fid") is not None:
        lines.append(f"best FID {state['best_fid']:.3f}")
    return "\n".join(lines)


def _objective_line(config: Config) -> str:
    """The objective and loss options when they are not the original's, else empty."""
    parts = []
    if config.objective != "ddgan":
        weight = {"siddm": f"ac_w {config.ac_w}", "ufogen": f"ufo_rec_w {config.ufo_rec_w}"}[config.objective]
        parts.append(f"objective {config.objective} ({weight})")
    if config.loss != "ns":
        parts.append(f"loss {config.loss}")
    if config.r2_gamma:
        parts.append(f"R2 {config.r2_gamma}")
    if config.ada_target:
        parts.append(f"ADA target {config.ada_target}")
    return ", ".join(parts)


def generator_sizes(config: Config) -> str:
    """The generator's kind and widths: NCSN++'s nf and ch_mult, or the MLP's layers."""
    if config.generator_kind == "MLP":
        return f"MLP, {config.mlp_depth} hidden layers of {config.mlp_width}"
    return f"{config.generator_kind}, nf {config.num_channels_dae}, ch_mult {list(config.ch_mult)}"


def _model_line(config: Config) -> str:
    """Size, steps, widths, space and classes of a model, on one line."""
    space = space_for(config) if space_class(config.space).named_in_summaries else None
    widths = generator_sizes(config) if config.generator_kind == "MLP" else \
        f"nf={config.num_channels_dae}, ch_mult={list(config.ch_mult)}"
    return (f"{config.image_size} px x {config.num_channels} ch, T={config.num_timesteps} ({config.schedule}), "
            + widths + (f", {space.describe()}, {config.generator_kind}" if space is not None else "")
            + (f", {config.num_classes} classes ({', '.join(config.class_names)})" if config.num_classes else ""))


def describe_model_folder(folder) -> str:
    """A few lines about a model folder (`ddgan info`): its format, what it was trained on, the model."""
    about = model_folder.read_about(folder)
    _, config = model_folder.read(folder)
    trained = about.get("trained", {})
    made_by = f"ddgan {about.get('ddgan_version', '?')}"
    lines = [f"{folder}: ddgan model folder format {about['format_version']} ({made_by}), "
             f"weights {about.get('weights', {}).get('dtype', '?')}",
             f"preset {config.preset}, data {trained.get('data', config.data)}"
             + (f", {trained['kimg']:.2f} kimg" if trained.get("kimg") is not None else ""),
             _model_line(config),
             f"G {networks.count_parameters(build_generator(config)) / 1e6:.2f} M parameters (EMA)"]
    metrics = trained.get("metrics") or {}
    if "fid" in metrics:
        lines.append(f"last FID logged {metrics['fid']:.3f}")
    return "\n".join(lines)
