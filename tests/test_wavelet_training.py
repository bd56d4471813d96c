"""Wavelet DDGANs end to end: training, exact resume and sampling in Haar wavelet space, WaveDiff's files."""

import numpy as np
import pytest
import torch

import networks
from ddgan import sampling
from ddgan.cli import main
from ddgan.config import make_config
from ddgan.models import build_generator, checkpoint, load_generator, looks_like_wavediff
from ddgan.spaces.wavelet import from_wavelet, to_wavelet
from ddgan.training.trainer import Trainer
from tests.helpers import assert_resumes_exactly, tiny

WAVELET = dict(space="wavelet", net_type="wavelet", rec_loss=True, image_size=16, ch_mult=[1, 2], num_disc_layers=3)


def test_a_tiny_wavelet_run_trains_resumes_exactly_and_samples(tmp_path, capsys):
    config = tiny("demo", tmp_path / "a", kimg=0.024, snapshot_kimg=0.008, lazy_reg=2, **WAVELET)
    assert config.diffused_shape == (12, 8, 8) and config.generator_kind == "WaveletNCSNpp"
    whole = assert_resumes_exactly(config, stop_after=3, total_steps=6)
    assert '"loss/rec"' in (whole / "log.jsonl").read_text()
    out = tmp_path / "s.npz"
    main(["sample", str(whole), f"--out={out}", "--seeds=0-3", "--device=cpu"])
    with np.load(out) as archive:
        assert archive["x"].shape == (4, 16, 16, 3)
    main(["info", str(whole)])
    assert "wavelet space (bundled bands), WaveletNCSNpp" in capsys.readouterr().out


def test_sampling_ends_in_pixel_space_through_the_inverse_transform(tmp_path):
    config = tiny("demo", tmp_path, **WAVELET)
    G = build_generator(config).eval()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.3 * torch.randn_like(p))
    images = np.concatenate(list(sampling.generate(G, config, [0, 1], progress=False)))
    x_T, zs, noises = sampling.seed_noise([0, 1], config)
    diffusion = __import__("ddgan.diffusion", fromlist=["Diffusion"]).Diffusion.from_config(config)
    x = diffusion.sample(G, x_T, config.nz, zs=zs, noises=noises)
    expected = sampling.to_uint8(from_wavelet(x, "bundled").clamp(-1, 1)).permute(0, 2, 3, 1).numpy()
    assert x_T.shape == (2, 12, 8, 8) and np.array_equal(images, expected)


def test_the_trainer_diffuses_wavelet_tensors_of_flipped_images(tmp_path):
    config = tiny("demo", tmp_path, hflip=False, wavelet_order="pytorch_wavelets", **WAVELET)
    trainer = Trainer(config)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    assert torch.equal(trainer.prepare_batch(images), to_wavelet(images, "pytorch_wavelets"))
    stats = trainer.run_iteration(images)
    assert torch.isfinite(stats["loss/rec"]) and stats["loss/rec"] > 0


@pytest.mark.parametrize(("flags", "message"), [
    (dict(space="wavelet", image_size=9, ch_mult=[1]), "--image_size=9 must be even in wavelet space"),
    (dict(space="wavelet", image_size=8, ch_mult=[1], patch_size=3), "--patch_size=3 must divide the 4 px"),
    (dict(space="wavelet", wavelet_order="haar"), "--wavelet_order must be one of bundled, pytorch_wavelets"),
    (dict(net_type="wavelet"), "--net_type=wavelet works on wavelet tensors or latents: add --space=wavelet"),
    (dict(space="planck"), "--space must be pixel or wavelet"),
    (dict(num_disc_layers=5), "--num_disc_layers=5: the Discriminator_small has 4 down blocks"),
    (dict(space="wavelet", image_size=8, ch_mult=[1]), "halves the 4 px it sees 3 times"),
])
def test_bad_wavelet_settings_name_the_flag(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config("demo", **flags)


def test_wavediff_checkpoints_load_with_a_wavelet_preset_only(tmp_path):
    config = make_config("cifar10_wavelet", num_channels_dae=8, nz=4, z_emb_dim=8, n_mlp=1)
    ours = build_generator(config)
    path = tmp_path / "netG_1300.pth"
    torch.save(networks.to_wavediff("NCSNpp", ours), path)
    assert looks_like_wavediff(torch.load(path, weights_only=True))
    with pytest.raises(checkpoint.CheckpointError, match=r"original WaveDiff checkpoint.*--preset=cifar10_wavelet"):
        load_generator(path)
    with pytest.raises(checkpoint.CheckpointError, match="is a WaveDiff checkpoint .* --preset=cifar10 is a pixel"):
        load_generator(path, preset="cifar10")
    flags = tmp_path / "flags.json"
    flags.write_text('{"num_channels_dae": 8, "nz": 4, "z_emb_dim": 8, "n_mlp": 1, "image_size": 16, '
                     '"num_channels": 12, "current_resolution": 16, "ori_image_size": 32, "attn_resolutions": [32], '
                     '"use_pytorch_wavelet": true, "ch_mult": [1, 2, 2]}')
    G, loaded = load_generator(path, preset="cifar10_wavelet", reference_config_path=flags)
    assert loaded.image_size == 32 and loaded.wavelet_order == "pytorch_wavelets" and loaded.space == "wavelet"
    for key, tensor in ours.state_dict().items():
        assert torch.equal(tensor, G.state_dict()[key])
    images = np.concatenate(list(sampling.generate(G, loaded, [3], progress=False)))
    assert images.shape == (1, 32, 32, 3)


def test_a_wavelet_model_can_be_class_conditional(tmp_path):
    config = tiny("demo", tmp_path, cond=True, num_classes=4, **WAVELET)
    trainer = Trainer(config)
    stats = trainer.run_iteration(torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(stats["loss/G"])
    G = trainer.G_ema
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.3 * torch.randn_like(p))
    images = [np.concatenate(list(sampling.generate(G, config, [5], labels=[label], progress=False)))
              for label in (0, 3)]
    assert images[0].shape == (1, 16, 16, 3) and not np.array_equal(images[0], images[1])
