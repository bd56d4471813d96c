"""The space a model diffuses: pixels and wavelets as before, and latent DDGANs on a tiny diffusers autoencoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddgan import sampling
from ddgan.cli import main
from ddgan.config import make_config, replace
from ddgan.data import open_dataset, write_image_array
from ddgan.data.demo import SHAPES, DemoShapes
from ddgan.diffusion.losses import reconstruction_weight
from ddgan.diffusion.process import Diffusion
from ddgan.models import checkpoint, load_generator
from ddgan.models.space import space_for
from ddgan.spaces import LatentSpace, PixelSpace, WaveletSpace, latent_store
from ddgan.spaces.wavelet import from_wavelet, to_wavelet
from ddgan.training.loop import run_training
from ddgan.training.start import config_from_flags
from ddgan.training.trainer import Trainer
from tests.conftest import load_fixture
from tests.helpers import assert_resumes_exactly, tiny, tiny_autoencoder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """64 demo shapes of 16 px with their classes, as an image array; the path."""
    demo = DemoShapes(image_size=16, size=64)
    path = tmp_path_factory.mktemp("data") / "shapes.npz"
    pixels = ((demo.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    write_image_array(path, pixels, np.array([SHAPES.index(s) for s in demo.shapes]), SHAPES)
    return path


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory, latent_extra):
    return tiny_autoencoder(tmp_path_factory.mktemp("ae") / "tiny")


def latent(tmp_path, shapes, ae, **overrides):
    """The demo preset at tiny widths on 16 px shapes, diffusing the latents of autoencoder `ae` (4 x 8 x 8)."""
    values = dict(data=str(shapes), image_size=16, ch_mult=[1, 2], space="latent", autoencoder=str(ae),
                  rec_loss=True, rec_loss_schedule="sigmoid", lazy_reg=2, hflip=True)
    return tiny("demo", tmp_path, **{**values, **overrides})


# -- pixel and wavelet spaces: exactly what they were ---------------------------------------------------


def test_pixel_and_wavelet_spaces_encode_and_decode_as_before():
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    pixel = space_for(make_config("demo", image_size=8, ch_mult=[1, 2]))
    assert isinstance(pixel, PixelSpace) and pixel.shape == pixel.config.diffused_shape == (3, 8, 8)
    assert pixel.encode(images) is images and torch.equal(pixel.decode(images), images.clamp(-1, 1))
    assert pixel.saved == {}
    for order in ("bundled", "pytorch_wavelets"):
        config = make_config("demo", image_size=8, ch_mult=[1], space="wavelet", wavelet_order=order,
                             num_disc_layers=2)
        wavelet = space_for(config)
        assert isinstance(wavelet, WaveletSpace) and wavelet.shape == config.diffused_shape == (12, 4, 4)
        assert torch.equal(wavelet.encode(images), to_wavelet(images, order))
        w = to_wavelet(images, order)
        assert torch.equal(wavelet.decode(w), from_wavelet(w, order).clamp(-1, 1))
        assert wavelet.saved == {"wavelet_order": order}
        flips = torch.tensor([True, False, True])
        mirrored = torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images)
        assert torch.equal(wavelet.training_batch(images, flips, None), to_wavelet(mirrored, order))


def test_the_sigmoid_schedule_is_lddgans():
    fixture = load_fixture("lddgan/lddgan_sampling.pt")["rec_loss"]
    alpha = torch.as_tensor(fixture["alpha"], dtype=torch.float64)
    epochs = len(alpha) - 1
    ours = torch.tensor([reconstruction_weight("sigmoid", e / epochs) for e in range(epochs + 1)], dtype=torch.float64)
    assert (ours - alpha).abs().max().item() < 1e-12
    assert reconstruction_weight("sigmoid", 0.5, 2.0) == 1.0
    assert reconstruction_weight("constant", 0.7, 0.25) == 0.25


# -- latent space -----------------------------------------------------------------------------------------


# Forty samples of a barely trained G are alike: their feature covariance is (nearly) singular.
@pytest.mark.filterwarnings("ignore:Matrix is singular", "ignore:invalid value encountered",
                            "ignore:The `disp` argument")
def test_a_latent_run_trains_resumes_exactly_samples_edits_and_measures_fid(latent_extra, shapes, autoencoder,
                                                                           tmp_path, capsys, seeded_single_thread):
    from eval import fid as fidlib
    from eval.sample import sample
    from tests.helpers import TinyFeatures

    config = latent(tmp_path, shapes, autoencoder, kimg=0.016, snapshot_kimg=0.008)
    run_dir = assert_resumes_exactly(config, stop_after=2, total_steps=4)
    kept = run_dir / "autoencoder"
    assert {"config.json", "diffusion_pytorch_model.safetensors", "ddgan_latent.json"} <= {
        p.name for p in kept.iterdir()}
    assert json.loads((kept / "ddgan_latent.json").read_text())["source"] == str(autoencoder)
    state = checkpoint.load(run_dir)
    assert not any("autoencoder" in key or "encoder" in key for key in state), "the autoencoder is kept once"
    saved = state["config"]
    assert (saved["latent_channels"], saved["latent_factor"]) == (4, 2) and saved["latent_scale"] > 0

    G, loaded = load_generator(run_dir)
    assert loaded.autoencoder == str(kept) and loaded.diffused_shape == (4, 8, 8)
    images = np.concatenate(list(sampling.generate(G, loaded, range(3), progress=False)))
    assert images.shape == (3, 16, 16, 3) and images.std() > 0
    # Sampling multiplies by the scale, decodes and clamps.
    x_T, zs, noises = sampling.seed_noise(range(3), loaded)
    with torch.no_grad():
        x = Diffusion.from_config(loaded).sample(G, x_T, loaded.nz, zs=zs, noises=noises)
    space = space_for(loaded)
    assert isinstance(space, LatentSpace)
    with torch.no_grad():
        decoded = space.autoencoder.decode(x * loaded.latent_scale).clamp(-1, 1)
    assert np.array_equal(images, sampling.to_uint8(decoded).permute(0, 2, 3, 1).numpy())

    out = sample(str(run_dir), out=str(tmp_path / "s.npz"), n=4, batch=2, device="cpu")
    assert np.load(out)["x"].shape == (4, 16, 16, 3)
    main(["edit", str(run_dir), f"--input={shapes}", "--start_step=1", f"--out={tmp_path}/edits.npz"])
    assert np.load(tmp_path / "edits.npz")["x"].shape == (64, 16, 16, 3)
    main(["info", str(run_dir)])
    assert "latent space: 4x8x8 latents of a KL autoencoder (f=2" in capsys.readouterr().out
    record = fidlib.fid(str(run_dir), ref=str(shapes), n=40, batch=20, device="cpu", feature_extractor=TinyFeatures(),
                        verbose=False)
    assert np.isfinite(record["value"]) and record["n"] == 40


@pytest.mark.parametrize("net_type", ["normal", "wavelet"])
def test_a_conditional_latent_run_samples_by_class(latent_extra, shapes, autoencoder, tmp_path, seeded_single_thread,
                                                   net_type):
    config = latent(tmp_path, shapes, autoencoder, cond=True, kimg=0.008, hflip=False, net_type=net_type)
    run_dir = run_training(config)
    G, loaded = load_generator(run_dir)
    assert loaded.num_classes == len(SHAPES)
    assert type(G).__name__ == ("WaveletNCSNpp" if net_type == "wavelet" else "NCSNpp")
    images = np.concatenate(list(sampling.generate(G, loaded, [0, 0], labels=[0, 3], progress=False)))
    assert images.shape == (2, 16, 16, 3)
    main(["edit", str(run_dir), f"--input={shapes}", "--start_step=1", "--class=cross", f"--out={tmp_path}/e.npz"])
    assert (run_dir / "samples-final.png").is_file()


def test_the_trainer_draws_each_steps_latents_from_the_cached_posteriors(latent_extra, shapes, autoencoder,
                                                                        tmp_path):
    space = space_for(latent(tmp_path, shapes, autoencoder, latent_scale=2.0))
    items, _ = space.training_data(open_dataset(str(shapes), 16))
    batch = torch.stack([items[i] for i in range(4)])
    assert batch.shape == (4, *space.item_shape) == (4, 2, 8, 8, 8)
    trainer = Trainer(space.config, space=space)
    stream = torch.Generator().set_state(trainer.rng.get_state())
    x0 = trainer.prepare_batch(batch)
    flips = torch.rand(4, generator=stream) < 0.5
    view = torch.where(flips.view(-1, 1, 1, 1), batch[:, 1], batch[:, 0])
    mean, logvar = view.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=stream)
    assert torch.equal(x0, (mean + torch.exp(0.5 * logvar) * noise) / 2.0)
    # A mirrored image's posterior is encoded, not the mirrored posterior.
    assert not torch.allclose(items.posteriors[:, 1], items.posteriors[:, 0].flip(3))


def test_the_posteriors_are_encoded_once_per_autoencoder_and_data(latent_extra, shapes, autoencoder, tmp_path,
                                                                  monkeypatch, seeded_single_thread):
    from ddgan.spaces.autoencoders import LDMAutoencoder

    calls = []
    encode = LDMAutoencoder.encode
    monkeypatch.setattr(LDMAutoencoder, "encode", lambda self, x: calls.append(len(x)) or encode(self, x))
    config = latent(tmp_path / "runs", shapes, autoencoder, kimg=0.004)
    first = run_training(config)
    assert sum(calls) == 2 * 64, "every image and its mirror, once"
    second = run_training(config)
    assert sum(calls) == 2 * 64, "the second run reads the cache"
    assert "latent cache: reused" in (second / "log.jsonl").read_text()
    other = tiny_autoencoder(tmp_path / "other", seed=1)
    run_training(replace(config, autoencoder=str(other)))
    assert sum(calls) == 4 * 64, "another autoencoder, another cache"
    assert len(list((tmp_path / "runs" / "latent-cache").glob("*.pt"))) == 2
    assert first.is_dir()


def test_an_ldm_checkpoint_and_a_vq_folder_work_as_latent_spaces(latent_extra, tmp_path, seeded_single_thread):
    import yaml

    from ddgan.spaces.autoencoders import from_ldm

    case = load_fixture("lddgan/kl_attn_tanh.pt")
    ckpt, config_file = tmp_path / "ae.ckpt", tmp_path / "ae.yaml"
    torch.save({"state_dict": case["state_dict"], "epoch": 3}, ckpt)
    config_file.write_text(yaml.safe_dump({"model": case["config"]}))
    config = tiny("demo", tmp_path, image_size=32, ch_mult=[1, 2], space="latent", autoencoder=str(ckpt),
                  autoencoder_config=str(config_file), latent_scale=105)
    space = space_for(config)
    assert space.shape == (4, 16, 16) and space.autoencoder.tanh_out
    x = case["inputs"]["x"]
    assert (space.encode(x) * 105 - case["outputs"]["mean"]).abs().max() < 1e-4
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    space.save(run_dir)
    again = space_for(config, run_dir)
    assert again.autoencoder.tanh_out and again.about["source"] == str(ckpt)
    z = case["inputs"]["z"] / 105
    assert torch.equal(again.decode(z), space.decode(z))

    vq = load_fixture("lddgan/vq_f4.pt")
    from_ldm(vq["config"], vq["state_dict"]).model.save_pretrained(tmp_path / "vq")
    vq_space = space_for(tiny("demo", tmp_path, image_size=32, ch_mult=[1, 2], space="latent",
                              autoencoder=str(tmp_path / "vq"), latent_scale=6, hflip=False))
    assert vq_space.autoencoder.kind == "vq" and vq_space.item_shape == (1, 3, 8, 8)
    h = vq["outputs"]["h"]
    assert torch.equal(vq_space.training_batch(h[:, None], None, None), h / 6)
    assert (vq_space.decode(h / 6) - vq["outputs"]["decode"].clamp(-1, 1)).abs().max() < 1e-4
    assert latent_store.weights_hash(vq_space.autoencoder) != latent_store.weights_hash(space.autoencoder)


@pytest.mark.parametrize("flags, message", [
    (dict(autoencoder=None), "--space=latent needs --autoencoder=SRC"),
    (dict(latent_scale=0), "--latent_scale must be a positive number"),
    (dict(latent_scale=-2.5), "--latent_scale must be a positive number"),
    (dict(rec_loss=False), "--rec_loss_schedule=sigmoid weights the --rec_loss term: add --rec_loss=True"),
    (dict(space="pixel"), "--autoencoder is for latent models: add --space=latent"),
])
def test_bad_latent_settings_name_the_flag(flags, message, shapes, tmp_path):
    with pytest.raises(ValueError, match=message):
        latent(tmp_path, shapes, "ae", **flags)


def test_autoencoders_that_do_not_fit_say_what_would(latent_extra, shapes, autoencoder, tmp_path):
    with pytest.raises(ValueError, match=r"--image_size=18 does not fit .*downsamples 4x: pass a multiple of 4, "
                                         r"e.g. --image_size=16 or 20"):
        space_for(latent(tmp_path, shapes, tiny_autoencoder(tmp_path / "f4", levels=3), image_size=18))
    gray = tiny_autoencoder(tmp_path / "gray", in_channels=1)
    with pytest.raises(ValueError, match=r"encodes 1-channel images, but --num_channels=3; pass --num_channels=1"):
        space_for(latent(tmp_path, shapes, gray))
    with pytest.raises(ValueError, match=r"in latent space the networks see 4x2x2 latents .*halves the 2 px"):
        space_for(latent(tmp_path, shapes, tiny_autoencoder(tmp_path / "f8", levels=4), image_size=16))
    with pytest.raises(ValueError, match=r"no such folder or file, and not a Hub id"):
        space_for(latent(tmp_path, shapes, tmp_path / "nowhere"))
    ckpt = tmp_path / "lonely.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match=r"add --autoencoder_config=PATH.yaml"):
        space_for(latent(tmp_path, shapes, ckpt))


def test_a_hub_id_in_the_cache_works_offline(latent_extra, shapes, autoencoder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from tests.conftest import put_in_hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_CACHE once, at import; a user sets it before starting.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    put_in_hub_cache(tmp_path / "hub", "someone/tiny-vae", autoencoder)
    space = space_for(latent(tmp_path, shapes, "someone/tiny-vae"))
    expected = space_for(latent(tmp_path, shapes, autoencoder))
    assert latent_store.weights_hash(space.autoencoder) == latent_store.weights_hash(expected.autoencoder)


@pytest.mark.parametrize("setting", ["HF_HUB_OFFLINE", "no network"])
def test_a_hub_id_offline_ends_with_one_line(latent_extra, shapes, tmp_path, monkeypatch, capsys, setting):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    if setting == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a closed port refuses at once, as a machine without a route to the Hub does after its timeout
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(SystemExit):
        main(["train", "--preset=demo", f"--data={shapes}", "--space=latent", "--autoencoder=nobody/no-such-vae",
              "--image_size=16", "--ch_mult=[1,2]", f"--outdir={tmp_path}", "--kimg=0.004", "--batch_size=4"])
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--autoencoder=nobody/no-such-vae" in error
    assert ("HF_HUB_OFFLINE (or" if setting == "HF_HUB_OFFLINE" else "cannot reach 127.0.0.1") in error
    assert "hf download nobody/no-such-vae" in error


def test_a_latent_run_resumed_with_another_autoencoder_is_refused(latent_extra, shapes, autoencoder, tmp_path,
                                                                  seeded_single_thread):
    run_dir = run_training(latent(tmp_path, shapes, autoencoder, kimg=0.004))
    other = tiny_autoencoder(tmp_path / "other", seed=3)
    with pytest.raises(ValueError, match=r"is not the autoencoder this run was trained with .*drop --autoencoder"):
        config_from_flags(resume=str(run_dir), autoencoder=str(other))
    resumed = config_from_flags(resume=str(run_dir), autoencoder=str(autoencoder), kimg=0.008)
    assert checkpoint.load(run_training(resumed))["step"] == 2


def test_a_conditional_latent_run_trains_under_torchrun(latent_extra, shapes, autoencoder, tmp_path):
    """Two gloo processes: rank 0 encodes the posteriors once, both draw from them, one run folder results."""
    from tests.helpers import TINY, torchrun_train

    flags = [f"--{k}={v}" for k, v in TINY.items()] + [
        "--preset=demo", f"--data={shapes}", "--image_size=16", "--ch_mult=[1,2]", "--batch_size=4", "--kimg=0.008",
        "--space=latent", f"--autoencoder={autoencoder}", "--cond=True", "--net_type=wavelet", f"--outdir={tmp_path}"]
    torchrun_train(*flags)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "latent-cache"]
    assert len(list((tmp_path / "latent-cache").iterdir())) == 1
    state = checkpoint.load(run_dir)
    assert state["images_seen"] == 8 and state["config"]["num_classes"] == len(SHAPES)
    assert (run_dir / "autoencoder" / "config.json").is_file()
    G, loaded = load_generator(run_dir)
    images = np.concatenate(list(sampling.generate(G, loaded, [0, 1], labels=[1, 2], progress=False)))
    assert images.shape == (2, 16, 16, 3)


def test_a_latent_model_folder_carries_its_decoder(latent_extra, shapes, autoencoder, tmp_path, seeded_single_thread):
    run_dir = run_training(latent(tmp_path, shapes, autoencoder, kimg=0.004))
    main(["export", str(run_dir), f"--out={tmp_path / 'model'}"])
    kept = tmp_path / "model" / "autoencoder"
    assert {"config.json", "diffusion_pytorch_model.safetensors", "ddgan_latent.json"} <= {
        p.name for p in kept.iterdir()}
    about = json.loads((tmp_path / "model" / "config.json").read_text())
    assert about["config"]["autoencoder"] == "autoencoder" and about["config"]["latent_scale"] > 0
    # The run folder may go: the model folder alone samples the same bytes.
    main(["sample", str(run_dir), "--seeds=0-3", f"--out={tmp_path / 'b.npz'}"])
    run_dir.rename(tmp_path / "gone")
    main(["sample", str(tmp_path / "model"), "--seeds=0-3", f"--out={tmp_path / 'a.npz'}"])
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
