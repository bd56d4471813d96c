"""LDDGAN's run.sh recipes as presets, and LDDGAN's own generator files loading with one plus --autoencoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import networks
from ddgan.config import PRESETS, make_config
from ddgan.data import write_image_array
from ddgan.models import load_generator
from ddgan.models.space import space_for
from tests.conftest import load_fixture
from tests.helpers import tiny_autoencoder

# run.sh's dataset names against ours.
PRESET_OF = {"cifar10": "cifar10_latent", "celeba_256": "celeba256_latent", "lsun": "lsun256_latent"}


@pytest.mark.parametrize("dataset", sorted(PRESET_OF))
def test_the_latent_presets_are_lddgans_recipes(dataset):
    recipe = load_fixture("lddgan/lddgan_sampling.pt")["recipes"][dataset]
    # The autoencoder's channels and factor are what an opened autoencoder would set: the recipe's latents.
    factor = recipe["image_size"] // recipe["current_resolution"]
    config = make_config(PRESET_OF[dataset], autoencoder="given", latent_channels=recipe["num_channels"],
                         latent_factor=factor)
    size = recipe["current_resolution"]
    assert config.diffused_shape == (recipe["num_channels"], size, size)
    same = ("image_size", "num_channels_dae", "num_res_blocks", "nz", "z_emb_dim", "n_mlp", "num_timesteps", "ngf",
            "num_disc_layers", "rec_loss")
    assert {k: getattr(config, k) for k in same} == {k: recipe[k] for k in same}
    assert list(config.ch_mult) == recipe["ch_mult"]
    # run.sh lists resolutions that never occur; the preset keeps those that do.
    assert config.attn_resolutions == networks.attention_that_occurs(recipe["attn_resolutions"], size, 1,
                                                                     recipe["ch_mult"])
    assert config.latent_scale == recipe["scale_factor"]
    # --sigmoid_learning weighs the L1 term, which only --rec_loss adds.
    sigmoid = recipe["rec_loss"] and recipe["sigmoid_learning"]
    assert config.rec_loss_schedule == ("sigmoid" if sigmoid else "constant")
    assert config.discriminator_kind == ("Discriminator_small" if dataset == "cifar10" else "Discriminator_large")
    assert (config.t_emb_dim, config.embedding_type, config.net_type) == (256, "positional", "normal")
    # What the user must pass is left out of the preset.
    assert PRESETS[PRESET_OF[dataset]].get("autoencoder") is None


@pytest.mark.parametrize("preset", sorted(PRESET_OF.values()))
def test_a_latent_preset_without_autoencoder_names_the_flag_and_the_file(preset):
    with pytest.raises(ValueError, match=rf"--autoencoder=SRC.*--preset={preset} expects .*--autoencoder_config="):
        make_config(preset)


@pytest.fixture
def lddgan_files(tmp_path):
    """The LDDGAN sampling fixture's generator as LDDGAN saves it (netG_5.pth under DataParallel's `module.`
    names, and a content.pth), its flags as JSON, and its autoencoder as LDM's .ckpt and yaml."""
    import yaml

    fixture = load_fixture("lddgan/lddgan_sampling.pt")
    case = load_fixture("lddgan/kl_attn_tanh.pt")
    state = {f"module.{k}": v for k, v in fixture["generator"]["state_dict"].items()}
    torch.save(state, tmp_path / "netG_5.pth")
    torch.save({"epoch": 5, "global_step": 10, "netG_dict": state, "netD_dict": {}}, tmp_path / "content.pth")
    (tmp_path / "flags.json").write_text(json.dumps(fixture["generator"]["config"]))
    torch.save({"state_dict": case["state_dict"]}, tmp_path / "ae.ckpt")
    (tmp_path / "ae.yaml").write_text(yaml.safe_dump({"model": case["config"]}))
    return fixture, tmp_path


@pytest.mark.parametrize("name", ["netG_5.pth", "content.pth"])
def test_lddgans_generator_files_load_and_decode_through_the_autoencoder(latent_extra, lddgan_files, name):
    fixture, folder = lddgan_files
    G, config = load_generator(folder / name, preset="cifar10_latent", reference_config_path=folder / "flags.json",
                               autoencoder=str(folder / "ae.ckpt"), autoencoder_config=str(folder / "ae.yaml"))
    assert config.space == "latent" and config.diffused_shape == (4, 16, 16) and config.image_size == 32
    assert config.latent_scale == fixture["scale_factor"]
    inputs, t = fixture["inputs"], fixture["steps"][0]
    with torch.no_grad():
        x0 = G(inputs["x_T"], torch.full((2,), t), inputs["z"][0])
    assert (x0 - fixture["trace"]["x0_pred"][0]).abs().max() < 1e-4
    # The returned config's space is the one the sampler decodes with: LDDGAN's images from its latents.
    images = space_for(config).decode(fixture["latent_sample"])
    assert (images - fixture["output"]).abs().max() < 1e-4


def test_sample_draws_images_from_an_lddgan_file(latent_extra, tmp_path):
    from ddgan.cli import main

    # A tiny random generator at the latents of a tiny random autoencoder (f 2, 4 channels: 4 x 8 x 8 at 16 px).
    ae = tiny_autoencoder(tmp_path / "ae")
    flags = dict(image_size=16, num_channels_dae=16, ch_mult=[1, 2], num_res_blocks=1, nz=8, z_emb_dim=16,
                 n_mlp=2, t_emb_dim=16, ngf=16)
    config = make_config("cifar10_latent", autoencoder=str(ae), **flags)
    G = networks.build("NCSNpp", space_for(config).config.network_kwargs())
    # Under the original's key names, as DataParallel saves them.
    torch.save({f"module.{k}": v for k, v in networks.to_wavediff("NCSNpp", G).items()}, tmp_path / "netG_1200.pth")
    (tmp_path / "flags.json").write_text(json.dumps(flags))
    out = tmp_path / "samples.npz"
    main(["sample", str(tmp_path / "netG_1200.pth"), "--preset=cifar10_latent",
          f"--reference_config={tmp_path / 'flags.json'}", f"--autoencoder={ae}", f"--out={out}", "--n=3",
          "--amp=none"])
    with np.load(out) as arrays:
        assert arrays["x"].shape == (3, 16, 16, 3) and arrays["x"].dtype == np.uint8
        inputs = arrays["x"]
    # edit takes the same flags: it encodes its inputs through the autoencoder first.
    write_image_array(tmp_path / "inputs.npz", inputs)
    main(["edit", str(tmp_path / "netG_1200.pth"), f"--input={tmp_path / 'inputs.npz'}", "--start_step=1",
          "--preset=cifar10_latent", f"--reference_config={tmp_path / 'flags.json'}", f"--autoencoder={ae}",
          f"--out={tmp_path / 'edits.npz'}", "--amp=none"])
    with np.load(tmp_path / "edits.npz") as arrays:
        assert arrays["x"].shape == (3, 16, 16, 3)


def test_an_lddgan_file_without_its_autoencoder_names_the_flag(lddgan_files):
    _, folder = lddgan_files
    # Without a preset the file is told apart from DDGAN's, and the error says what an LDDGAN file takes.
    with pytest.raises(ValueError, match="cifar10_latent with --autoencoder"):
        load_generator(folder / "netG_5.pth")
    with pytest.raises(ValueError, match="--space=latent needs --autoencoder=SRC"):
        load_generator(folder / "netG_5.pth", preset="cifar10_latent")
