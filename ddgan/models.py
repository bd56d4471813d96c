"""Networks from a Config, a ready-to-sample generator from any checkpoint, and a checkpoint's description."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

import networks
from ddgan import checkpoint, model_folder
from ddgan.config import Config, make_config
from ddgan.space import kept_config, space_for


def build_generator(config: Config) -> torch.nn.Module:
    """A randomly initialised generator for `config`: NCSN++, or WaveDiff's wavelet NCSN++ (--net_type=wavelet)."""
    return networks.build(config.generator_kind, config.network_kwargs())


def build_discriminator(config: Config) -> torch.nn.Module:
    """A randomly initialised discriminator (small or large) for `config`."""
    return networks.build(config.discriminator_kind, config.network_kwargs())


def original_config(preset: str | None = None, flags: str | os.PathLike | dict | None = None, **overrides) -> Config:
    """The Config of an original checkpoint: a preset, the original's flags (a JSON file or a dict), or both."""
    values = {}
    if isinstance(flags, dict):
        values = dict(flags)
    elif flags is not None:
        path = Path(flags)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise checkpoint.CheckpointError(f"--reference_config {path}: cannot read it as JSON ({error})") from None
    known = {f for f in Config.__dataclass_fields__}
    # The original's files hold many other flags.
    raw, values = values, {k: v for k, v in values.items() if k in known}
    # The original's BigGAN blocks resample without a separate conv whatever this flag says.
    values.pop("resamp_with_conv", None)
    if "use_pytorch_wavelet" in raw:  # WaveDiff's band order, as a flag
        values["wavelet_order"] = "pytorch_wavelets" if raw["use_pytorch_wavelet"] else "bundled"
    if "current_resolution" in raw:
        values = _from_wavediff_flags(raw, values)
    if "scale_factor" in raw:
        values = _from_lddgan_flags(raw, values)
    return make_config(preset or "cifar10", **{**values, **overrides})


def _from_wavediff_flags(raw: dict, values: dict) -> dict:
    """Our settings from WaveDiff's: its files give the sizes its networks see (image_size =
    current_resolution, 4C channels) and the pixel size as ori_image_size."""
    values = {k: v for k, v in values.items() if k not in ("image_size", "num_channels")} | {"space": "wavelet"}
    if "ori_image_size" in raw:
        values["image_size"] = raw["ori_image_size"]
    if "attn_resolutions" in values and "ch_mult" in values:
        values["attn_resolutions"] = list(networks.attention_that_occurs(
            values["attn_resolutions"], raw["current_resolution"], raw.get("patch_size", 1), values["ch_mult"]))
    return values


def _from_lddgan_flags(raw: dict, values: dict) -> dict:
    """LDDGAN's flags are WaveDiff's plus its own: its networks see latents, not wavelets, its num_channels is the
    latents' (the autoencoder gives them; LDDGAN's images are RGB), scale_factor is our latent_scale, and
    --sigmoid_learning weighs the L1 term only where --rec_loss adds it."""
    values = {k: v for k, v in values.items() if k not in ("num_channels", "wavelet_order")}
    values |= {"space": "latent", "latent_scale": float(raw["scale_factor"])}
    if values.get("rec_loss") and raw.get("sigmoid_learning"):
        values["rec_loss_schedule"] = "sigmoid"
    return values


def load_generator(path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu",
                   preset: str | None = None, reference_config_path: str | os.PathLike | None = None,
                   autoencoder: str | None = None, autoencoder_config: str | None = None):
    """(G in eval mode on `device`, its Config) from a ddgan checkpoint or run folder, a model folder (local or a
    Hub id, `ddgan export`'s), or an original DDGAN, WaveDiff or LDDGAN netG_*.pth / content.pth (whose
    architecture --preset or --reference_config gives; an LDDGAN file also needs the --autoencoder, and its
    --autoencoder_config, that it was trained on)."""
    folder = model_folder.locate(path)
    if folder is not None:
        if not ema:
            raise ValueError(f"{path} is a model folder, which holds the EMA generator only; drop --ema=False")
        return model_folder.read(folder, device)
    file = checkpoint.resolve(path)
    obj = checkpoint.load(file, original_ok=True)
    if checkpoint.is_original(obj):
        state = obj["netG_dict"] if "netG_dict" in obj else obj
        wavediff = looks_like_wavediff(state)
        if preset is None and reference_config_path is None:
            raise checkpoint.CheckpointError(
                f"{file} is an original {'WaveDiff' if wavediff else 'DDGAN'} checkpoint, which does not record its "
                f"architecture; add --preset={'cifar10_wavelet' if wavediff else 'cifar10'} (or "
                f"{'stl10_wavelet, celeba256_wavelet, lsun256_wavelet' if wavediff else 'celeba256, lsun256'}) or "
                "--reference_config=FLAGS.json (an LDDGAN file: a latent preset such as cifar10_latent with "
                "--autoencoder)")
        # Only latent configs take an autoencoder: passing None to the others keeps their own checks' wording.
        latent = {k: v for k, v in (("autoencoder", autoencoder), ("autoencoder_config", autoencoder_config))
                  if v is not None}
        config = original_config(preset, reference_config_path, **latent)
        if config.space == "latent":
            # The latents' shape (and so the generator's) is the autoencoder's, known once it is open.
            config = space_for(config).config
        elif wavediff and config.space != "wavelet":
            raise checkpoint.CheckpointError(
                f"{file} is a WaveDiff checkpoint (its generator takes wavelet tensors), but --preset={config.preset} "
                "is a pixel-space recipe; use a wavelet preset (cifar10_wavelet, stl10_wavelet, celeba256_wavelet, "
                "lsun256_wavelet) or a config with space wavelet (an LDDGAN file: a latent preset such as "
                "cifar10_latent with --autoencoder)")
        # LDDGAN's generator is WaveDiff's code, so its weights convert the same way.
        convert = networks.from_wavediff if config.space in ("wavelet", "latent") else networks.from_reference
        generator = convert(config.generator_kind, config.network_kwargs(), state)
    else:
        # A latent model decodes with the autoencoder its run folder keeps, wherever the folder has moved.
        config = kept_config(Config.from_dict(obj["config"], f"checkpoint {file}"), file.parent)
        generator = build_generator(config)
        generator.load_state_dict(obj["G_ema"] if ema and obj.get("G_ema") is not None else obj["G"])
    return generator.to(device).eval().requires_grad_(False), config


def resolve_source(path: str | os.PathLike) -> Path:
    """What a command's CKPT names: a model folder (a Hub id fetched into the Hub cache) or a checkpoint file."""
    return model_folder.locate(path) or checkpoint.resolve(path)


def default_output(ckpt: str | os.PathLike, source: Path, prefix: str, suffix: str = ".png") -> Path:
    """Where a command writes by default: beside a checkpoint, or in the working folder for a model folder, whose
    files are the model's alone (and may lie in the Hub cache)."""
    if source.is_dir():
        name = re.sub(r"[^\w.-]+", "_", str(ckpt).strip("/\\")) or source.name
        return Path.cwd() / f"{prefix}-{name}{suffix}"
    return source.parent / f"{prefix}-{source.stem}{suffix}"


def looks_like_wavediff(state: dict) -> bool:
    """Whether an original generator state_dict is WaveDiff's: wavelet skips, or a 4C-channel input conv."""
    if any("convH_0" in key for key in state):
        return True
    convs = [v for k, v in state.items() if k.startswith(("all_modules.", "module.all_modules.")) and v.ndim == 4]
    return bool(convs) and convs[0].shape[1] in (4, 12)


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
    if state.get("best_fid") is not None:
        lines.append(f"best FID {state['best_fid']:.3f}")
    return "\n".join(lines)


def _model_line(config: Config) -> str:
    """Size, steps, widths, space and classes of a model, on one line."""
    space = space_for(config) if config.space != "pixel" else None
    return (f"{config.image_size} px x {config.num_channels} ch, T={config.num_timesteps} ({config.schedule}), "
            f"nf={config.num_channels_dae}, ch_mult={list(config.ch_mult)}"
            + (f", {space.describe()}, {config.generator_kind}" if space is not None else "")
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
