"""Bridge to the original implementation (NVlabs/denoising-diffusion-gan): configs, weights, files.

The original generator keeps all its layers in one flat `all_modules` list that its forward pass walks
with a running index; this file is the one place that describes that layout. `_generator_layout` lists
our modules in exactly the order the original appends them, so position i is `all_modules.<i>`; the
rename tables translate parameter names inside each module. The discriminators map by name. The original
has no class-conditional networks, so only unconditional ones (num_classes=0) convert. WaveDiff keeps this
layout for its wavelet generator and discriminators; `networks.wavediff` reads its configs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from networks.discriminator import DiscriminatorLarge, DiscriminatorSmall, DownConvBlock
from networks.generator import InputSkip, NCSNpp, ResidualInputPyramid
from networks.layers import ResnetBlockBigGAN, SelfAttention
from networks.mlp import MLPDiscriminator, MLPGenerator
from networks.wavelet_generator import WaveletDownsample, WaveletNCSNpp, WaveletResnetBlock

KINDS = ("NCSNpp", "Discriminator_small", "Discriminator_large", "WaveletNCSNpp", "MLP", "Discriminator_mlp")
# Kinds with the original generator's flat `all_modules` layout (WaveDiff's WaveletNCSNpp keeps it).
GENERATOR_KINDS = ("NCSNpp", "WaveletNCSNpp")

# Defaults of the original train_ddgan.py argument parser (ch_mult has none: it must be given), and of
# our additions to it (num_classes).
REFERENCE_DEFAULTS = {
    "image_size": 32,
    "num_channels": 3,
    "centered": True,
    "num_channels_dae": 128,
    "n_mlp": 3,
    "ch_mult": None,
    "num_res_blocks": 2,
    "attn_resolutions": (16,),
    "dropout": 0.0,
    "resamp_with_conv": True,
    "conditional": True,
    "fir": True,
    "fir_kernel": [1, 3, 3, 1],
    "skip_rescale": True,
    "resblock_type": "biggan",
    "progressive": "none",
    "progressive_input": "residual",
    "progressive_combine": "sum",
    "embedding_type": "positional",
    "fourier_scale": 16.0,
    "not_use_tanh": False,
    "nz": 100,
    "z_emb_dim": 256,
    "t_emb_dim": 256,
    "ngf": 64,
    "num_classes": 0,  # ours: class labels to condition on; the original's networks are all unconditional
}

# WaveDiff's additions to the config (VinAIResearch/WaveDiff train_wddgan.py defaults); `networks.wavediff`
# reads its configs. num_disc_layers is absent here: without it the discriminators use all their blocks.
WAVELET_DEFAULTS = {"patch_size": 1, "no_use_fbn": False, "no_use_freq": False, "no_use_residual": False}

# Reference config name -> NCSNpp argument name, for every argument the generator takes.
_GENERATOR_ARGS = {name: name for name in REFERENCE_DEFAULTS if name not in ("t_emb_dim", "ngf")}
_GENERATOR_ARGS["num_channels_dae"] = "nf"

# Our parameter-holding submodule -> the original's, inside each kind of block.
_RENAMES: dict[type, dict[str, str]] = {
    ResnetBlockBigGAN: {"norm_0.style": "GroupNorm_0.style", "conv_0": "Conv_0", "dense_t": "Dense_0",
                        "norm_1.style": "GroupNorm_1.style", "conv_1": "Conv_1", "skip": "Conv_2"},
    SelfAttention: {"norm": "GroupNorm_0", "q": "NIN_0", "k": "NIN_1", "v": "NIN_2", "proj_out": "NIN_3"},
    DownConvBlock: {"conv_0": "conv1.0", "conv_1": "conv2.0", "dense_t": "dense_t1", "skip": "skip.0"},
    InputSkip: {"conv": "Conv_0"},
}
_RENAMES[WaveletResnetBlock] = {**_RENAMES[ResnetBlockBigGAN], "conv_h": "convH_0"}
# The original's NIN layers hold W [in, out] and b where we hold 1x1 conv weight [out, in, 1, 1] and bias.
_NIN_PARAMS = {"weight": "W", "bias": "b"}


@dataclass(frozen=True)
class _Entry:
    """One tensor: our state_dict key, the original's key, and whether it is a NIN weight/bias."""

    ours: str
    ref: str
    nin: bool = False


# ---------------------------------------------------------------------------------------------------------
# Configs and construction.


def with_reference_defaults(config: Mapping | argparse.Namespace | None) -> dict:
    """The original's config with its train_ddgan.py defaults filled in (a Namespace is accepted)."""
    if isinstance(config, argparse.Namespace):
        config = vars(config)
    return {**REFERENCE_DEFAULTS, **dict(config or {})}


def _check_kind(kind: str) -> str:
    """Validate a network kind name."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def generator_kwargs(config: Mapping | argparse.Namespace) -> dict:
    """NCSNpp constructor arguments from a reference config."""
    cfg = with_reference_defaults(config)
    if cfg["ch_mult"] is None:
        raise ValueError("config['ch_mult'] is required (train_ddgan.py has no default), e.g. [1, 2, 2, 2]")
    kwargs = {ours: cfg[ref] for ref, ours in _GENERATOR_ARGS.items()}
    attn = kwargs["attn_resolutions"]
    kwargs["attn_resolutions"] = (attn,) if isinstance(attn, int) else tuple(attn)
    return kwargs


def build(kind: str, config: Mapping | argparse.Namespace | None = None) -> nn.Module:
    """Randomly initialised network of `kind` (NCSNpp, WaveletNCSNpp, Discriminator_small/large; ours: MLP and
    Discriminator_mlp, sized by mlp_width and mlp_depth) from a reference config (WaveDiff's names for
    WaveletNCSNpp's switches and the discriminators' num_disc_layers)."""
    kind = _check_kind(kind)
    if kind == "NCSNpp":
        return NCSNpp(**generator_kwargs(config))
    cfg = with_reference_defaults(config)
    if kind in ("MLP", "Discriminator_mlp"):
        sizes = dict(data_dim=cfg["num_channels"] * cfg["image_size"] ** 2, width=cfg["mlp_width"],
                     depth=cfg["mlp_depth"], t_emb_dim=cfg["t_emb_dim"], fourier_features=0)
        return MLPGenerator(nz=cfg["nz"], **sizes) if kind == "MLP" else MLPDiscriminator(**sizes)
    if kind == "WaveletNCSNpp":
        cfg = {**WAVELET_DEFAULTS, **cfg}
        return WaveletNCSNpp(**generator_kwargs(cfg), **{name: cfg[name] for name in WAVELET_DEFAULTS})
    discriminator = DiscriminatorSmall if kind == "Discriminator_small" else DiscriminatorLarge
    layers = {} if cfg.get("num_disc_layers") is None else {"num_layers": cfg["num_disc_layers"]}
    return discriminator(nc=2 * cfg["num_channels"], ngf=cfg["ngf"], t_emb_dim=cfg["t_emb_dim"], act="lrelu",
                         num_classes=cfg["num_classes"], class_head=cfg.get("class_loss", 0) > 0, **layers)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# Layouts.


def _generator_layout(net: NCSNpp) -> list[tuple[str, str]]:
    """(our module, original module) pairs, `all_modules` in the order the original builds it."""
    modules: list[str] = []
    if net.time_embed.fourier is not None:
        modules.append("time_embed.fourier")
    if net.time_embed.dense_0 is not None:
        modules += ["time_embed.dense_0", "time_embed.dense_1"]
    modules.append("input_conv")
    for i, level in enumerate(net.encoder.levels):
        for j, attention in enumerate(level.attentions):
            modules.append(f"encoder.levels.{i}.blocks.{j}")
            if isinstance(attention, SelfAttention):
                modules.append(f"encoder.levels.{i}.attentions.{j}")
        if level.down is not None:
            modules.append(f"encoder.levels.{i}.down")
        if level.input_pyramid is not None:
            modules.append(f"encoder.levels.{i}.input_pyramid")
    modules += ["middle.block_0", "middle.attention", "middle.block_1"]
    for i in reversed(range(len(net.decoder.levels))):
        level = net.decoder.levels[i]
        modules += [f"decoder.levels.{i}.blocks.{j}" for j in range(len(level.blocks))]
        if isinstance(level.attention, SelfAttention):
            modules.append(f"decoder.levels.{i}.attention")
        if level.output_skip is not None:
            modules += [f"decoder.levels.{i}.output_skip.norm", f"decoder.levels.{i}.output_skip.conv"]
        if level.up is not None:
            modules.append(f"decoder.levels.{i}.up")
    if net.output_conv is not None:
        modules += ["output_norm", "output_conv"]
    layout = [(ours, f"all_modules.{index}") for index, ours in enumerate(modules)]
    # The original's mapping network is Sequential(PixelNorm, dense, act, dense, act, ...).
    mapping = net.z_mapping.layers
    layout += [(f"z_mapping.layers.{j}", f"z_transform.{2 * j + 1}") for j in range(len(mapping))]
    return layout


def _discriminator_layout(net: nn.Module) -> list[tuple[str, str]]:
    """(our module, original module) pairs of a discriminator."""
    layout = [("time_embed.dense_0", "t_embed.main.0"), ("time_embed.dense_1", "t_embed.main.2"),
              ("input_conv", "start_conv")]
    layout += [(f"blocks.{i}", f"conv{i + 1}") for i in range(len(net.blocks))]
    return layout + [("final_conv", "final_conv"), ("head", "end_linear")]


def _renames(module: nn.Module) -> dict[str, str]:
    """Submodule renames inside one of our modules (empty for plain layers)."""
    if isinstance(module, ResidualInputPyramid):
        if isinstance(module.down, WaveletDownsample):
            return {"down.conv": ""}  # WaveDiff's WaveletDownsample holds a bare weight and bias
        return {"down.conv": "Conv2d_0" if module.down.fir else "Conv_0"}
    return _RENAMES.get(type(module), {})


def _entries(kind: str, net: nn.Module) -> list[_Entry]:
    """Every tensor of `net`, in the original's order, with its original key."""
    num_classes = getattr(net, "num_classes", 0)
    if num_classes:
        raise ValueError(f"this {kind} is class-conditional (num_classes={num_classes}), and the original "
                         "implementation has no class-conditional networks: only num_classes=0 converts to or "
                         "from its layout")
    layout = _generator_layout(net) if kind in GENERATOR_KINDS else _discriminator_layout(net)
    entries = []
    for ours, ref in layout:
        module = net.get_submodule(ours)
        renames = _renames(module)
        for local in module.state_dict():
            owner, _, param = local.rpartition(".")
            ref_owner = renames.get(owner, owner)
            nin = ref_owner.startswith("NIN_")
            ref_param = _NIN_PARAMS[param] if nin else param
            ref_local = f"{ref_owner}.{ref_param}" if ref_owner else ref_param
            entries.append(_Entry(f"{ours}.{local}", f"{ref}.{ref_local}", nin))
    covered = {entry.ours for entry in entries}
    missed = [key for key in net.state_dict() if key not in covered]
    if missed or len(covered) != len(entries):
        raise RuntimeError(f"reference layout of {kind} does not cover {missed}")
    return entries


def _to_reference_tensor(tensor: torch.Tensor, nin: bool) -> torch.Tensor:
    """Our tensor in the original's layout."""
    if nin and tensor.ndim == 4:
        return tensor[:, :, 0, 0].t().contiguous()
    return tensor


def _from_reference_tensor(tensor: torch.Tensor, nin: bool) -> torch.Tensor:
    """The original's tensor in our layout."""
    if nin and tensor.ndim == 2:
        return tensor.t()[:, :, None, None].contiguous()
    return tensor


# ---------------------------------------------------------------------------------------------------------
# Conversion.


def to_reference(kind: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of `module` under the original implementation's key names and layouts."""
    kind = _check_kind(kind)
    ours = module.state_dict()
    return {e.ref: _to_reference_tensor(ours[e.ours], e.nin) for e in _entries(kind, module)}


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix DistributedDataParallel adds to every key."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def load_reference_state_dict(kind: str, module: nn.Module,
                              state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load an original-layout state dict into `module` (strict), explaining any mismatch."""
    kind = _check_kind(kind)
    state_dict = strip_ddp_prefix(state_dict)
    entries = _entries(kind, module)
    ours = module.state_dict()
    problems = []
    for entry in entries:
        if entry.ref not in state_dict:
            continue
        expected = tuple(_to_reference_tensor(ours[entry.ours], entry.nin).shape)
        given = tuple(state_dict[entry.ref].shape)
        if given != expected:
            problems.append(f"first mismatching parameter {entry.ref}: the state_dict has shape {given}, "
                            f"the config expects {expected}")
            break
    expected_keys = [entry.ref for entry in entries]
    missing = [key for key in expected_keys if key not in state_dict]
    unexpected = [key for key in state_dict if key not in set(expected_keys)]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if problems:
        raise ValueError(f"state_dict does not fit the {kind} config; " + "; ".join(problems))
    converted = {e.ours: _from_reference_tensor(state_dict[e.ref], e.nin) for e in entries}
    module.load_state_dict(converted, strict=True)
    return module


def _listing(keys: list[str], limit: int = 12) -> str:
    """Comma-separated keys, shortened after `limit`."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def from_reference(kind: str, config: Mapping | argparse.Namespace | None,
                   state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Network of `kind` built from a reference config and loaded with original-layout weights."""
    return load_reference_state_dict(kind, build(kind, config), state_dict)


def load_reference_file(path: str | os.PathLike, config: Mapping | argparse.Namespace | None = None,
                        kind: str = "NCSNpp") -> nn.Module:
    """Load the original code's `netG_<epoch>.pth` (state dict) or `content.pth` (training state).

    For `content.pth`, `kind` selects `netG_dict` (NCSNpp) or `netD_dict` (a discriminator), and its
    saved `args` serve as the config when none is given. The file is read as data only (weights_only):
    a pickle that would run code is refused.
    """
    kind = _check_kind(kind)
    with torch.serialization.safe_globals([argparse.Namespace]):
        saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, Mapping):
        raise ValueError(f"{path} holds a {type(saved).__name__}, not a state dict or training checkpoint")
    if "netG_dict" in saved or "netD_dict" in saved:
        key = "netG_dict" if kind in GENERATOR_KINDS else "netD_dict"
        if key not in saved:
            raise ValueError(f"{path} has no {key!r} for kind {kind!r}")
        if config is None and "args" in saved:
            config = saved["args"]
        saved = saved[key]
    if config is None:
        raise ValueError(f"config is required to load {path}: pass the original's arguments (ch_mult, ...)")
    return from_reference(kind, config, saved)
