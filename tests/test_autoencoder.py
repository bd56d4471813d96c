"""`ddgan autoencoder`: a small diffusers AutoencoderKL trained on the user's images, resumable exactly."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ddgan.data import write_image_array
from tests.helpers import run_cli

BATCH = 8
TINY = {"kimg": 4 * BATCH / 1000, "batch_size": BATCH}  # four steps


pytestmark = pytest.mark.usefixtures("latent_extra")


@pytest.fixture
def squares(tmp_path):
    """32 images of 8x8: a coloured square of random size and place on a dark ground; the path of their .npz."""
    rng = np.random.default_rng(0)
    x = np.full((32, 8, 8, 3), 20, dtype=np.uint8)
    for image in x:
        top, left = rng.integers(0, 4, size=2)
        side = rng.integers(3, 5)
        image[top:top + side, left:left + side] = rng.integers(60, 256, size=3)
    path = tmp_path / "squares.npz"
    write_image_array(path, x)
    return path


def train(data, out, **flags):
    from ddgan.training.autoencoder import autoencoder

    return autoencoder(str(data), out=str(out), **{**TINY, **flags})


def saved_state(out) -> dict:
    return torch.load(out / "autoencoder-state.pt", weights_only=True)


def test_the_command_writes_a_diffusers_folder_that_loads(squares, tmp_path, capsys, seeded_single_thread):
    import diffusers

    out = tmp_path / "ae"
    code, stdout, stderr = run_cli(["autoencoder", str(squares), f"--out={out}", f"--kimg={TINY['kimg']}",
                                    f"--batch_size={BATCH}", "--ch_mult=[1,2]", "--snapshot_kimg=0.016"], capsys)
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out), "the command prints the folder last"
    assert stdout.count("LPIPS is off") <= 1, "said once"
    model = diffusers.AutoencoderKL.from_pretrained(out, low_cpu_mem_usage=False)
    state = saved_state(out)
    assert all(torch.equal(value, state["model"][name]) for name, value in model.state_dict().items())
    summary = json.loads((out / "ddgan_autoencoder.json").read_text())
    assert summary["data"] == str(squares) and summary["kimg"] == pytest.approx(TINY["kimg"])
    assert summary["latent_shape"] == [4, 4, 4] and summary["downsampling_factor"] == 2
    assert summary["scaling_factor"] == pytest.approx(1 / summary["latent_std"])
    assert model.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    assert 0 < summary["l1"] < 2
    # originals above, reconstructions below: two rows of 8 images, enlarged 8x
    assert Image.open(out / "reconstructions-final.png").size == (8 * 64, 2 * 64)
    assert (out / "reconstructions-000000016.png").is_file()
    assert list((out / "tensorboard").iterdir())
    assert not list(out.glob(".*")), "no temporary file or folder is left behind"


def test_the_loss_goes_down(squares, tmp_path, seeded_single_thread):
    out = tmp_path / "ae"
    train(squares, out, kimg=BATCH / 1000)
    first = json.loads((out / "ddgan_autoencoder.json").read_text())["l1"]
    train(squares, out, kimg=40 * BATCH / 1000)
    last = json.loads((out / "ddgan_autoencoder.json").read_text())
    assert last["steps"] == 40
    assert last["l1"] < 0.4 * first, (first, last["l1"])


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(squares, tmp_path, seeded_single_thread):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(squares, straight, kimg=6 * BATCH / 1000, snapshot_kimg=2 * BATCH / 1000)  # snapshots must not matter
    train(squares, halves, kimg=3 * BATCH / 1000)
    train(squares, halves, kimg=6 * BATCH / 1000, resume=True)
    a, b = saved_state(straight), saved_state(halves)
    assert a["step"] == b["step"] == 6
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for index, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert torch.equal(a["noise"], b["noise"])


def test_bad_inputs_are_refused_with_the_fix(squares, tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(ValueError, match=re.escape(f"DATA='{missing}' cannot be read") + ".*a .npz with uint8 images"):
        train(missing, tmp_path / "a")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.npz' cannot be read"):
        train(broken, tmp_path / "a")
    with pytest.raises(ValueError, match=r"DATA's image size 8 is not divisible by the downsampling factor 16"):
        train(squares, tmp_path / "a", ch_mult=[1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"--image_size 6 is not divisible by the downsampling factor 4"):
        train(squares, tmp_path / "a", image_size=6, ch_mult=[1, 2, 2])
    with pytest.raises(ValueError, match=r"widths \[24, 48\].*--norm_groups=32.*pass --norm_groups=24"):
        train(squares, tmp_path / "a", ch=24)
    with pytest.raises(ValueError, match="--resume=True but .* does not exist"):
        train(squares, tmp_path / "a", resume=True)
    with pytest.raises(ValueError, match=r"--ch_mult=3: expected a list"):
        train(squares, tmp_path / "a", ch_mult=3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no autoencoder-state.pt: a model this command did not train"):
        train(squares, foreign)


def test_resuming_with_other_architecture_flags_names_them(squares, tmp_path, seeded_single_thread):
    out = tmp_path / "ae"
    train(squares, out, kimg=BATCH / 1000)
    with pytest.raises(ValueError, match=r"--ch: 32 in the state, 64 now; --latent_channels: 4 in the state, 3 now"):
        train(squares, out, ch=64, latent_channels=3)
    with pytest.raises(ValueError, match=r"--image_size: 8 in the state, 4 now"):
        train(squares, out, image_size=4)


def test_lpips_is_off_without_its_weights(tmp_path, monkeypatch):
    from ddgan.training.autoencoder import perceptual_loss

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    model, why = perceptual_loss(torch.device("cpu"))
    assert model is None and ("not installed" in why or "not on this machine" in why)


def test_from_diffusers_wraps_a_trained_folder(squares, tmp_path, seeded_single_thread):
    from ddgan.spaces.autoencoders import LDMAutoencoder, from_diffusers

    out = tmp_path / "ae"
    train(squares, out, kimg=BATCH / 1000, ch_mult=[1, 2, 2])
    autoencoder = from_diffusers(out)
    assert isinstance(autoencoder, LDMAutoencoder) and autoencoder.kind == "kl"
    assert (autoencoder.latent_channels, autoencoder.downsampling_factor) == (4, 4)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        mean, logvar = autoencoder.encode(x)
        assert mean.shape == logvar.shape == (2, 4, 2, 2)
        assert autoencoder.decode(mean).shape == (2, 3, 8, 8)
        assert torch.equal(autoencoder(x), autoencoder.decode(mean))
    assert from_diffusers(autoencoder.model).model is autoencoder.model
    with pytest.raises(ValueError, match="has no config.json"):
        from_diffusers(tmp_path)
    (tmp_path / "vq").mkdir()
    (tmp_path / "vq" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ValueError, match="holds a diffusers UNet2DModel, not an AutoencoderKL or a VQModel"):
        from_diffusers(tmp_path / "vq")


def test_the_command_is_registered_with_help_and_flag_checks(capsys):
    code, out, _ = run_cli(["autoencoder", "--help"], capsys)
    assert code == 0 and out.startswith("usage: ddgan autoencoder DATA --out=OUT")
    assert "--ch_mult='[1,2]'" in out and "--kl_weight=1e-06" in out
    code, out, err = run_cli(["autoencoder", "demo", "--out=x", "--kimgg=1"], capsys)
    assert code == 2 and "unknown flag --kimgg; did you mean --kimg?" in err
