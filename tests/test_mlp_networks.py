"""The MLP networks on images (--net_type=mlp, --discriminator=mlp): built from the config, trained, resumed,
sampled, and refused where they cannot work."""

import numpy as np
import pytest
import torch

from ddgan.config import make_config
from ddgan.models import describe_checkpoint, load_generator
from ddgan.models.build import build_discriminator, build_generator
from ddgan.sampling import generate
from ddgan.training.trainer import Trainer
from networks import MLPDiscriminator, MLPGenerator, count_parameters
from tests.helpers import assert_resumes_exactly, tiny

MLP = dict(net_type="mlp", discriminator="mlp", mlp_width=16, mlp_depth=2)


def dense(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def test_mlp_networks_are_built_from_the_config():
    config = make_config("stackmnist", image_size=8, nz=4, t_emb_dim=8, **MLP)
    G, D = build_generator(config), build_discriminator(config)
    assert isinstance(G, MLPGenerator) and isinstance(D, MLPDiscriminator)
    assert (config.generator_kind, config.discriminator_kind) == ("MLP", "Discriminator_mlp")
    pixels, width, step = 3 * 8 * 8, 16, dense(8, 8)  # the step embedding's learned layer
    assert count_parameters(G) == step + dense(pixels + 4 + 8, width) + dense(width, width) + dense(width, pixels)
    assert count_parameters(D) == step + dense(2 * pixels + 8, width) + dense(width, width) + dense(width, 1)
    x, t = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    x0 = G(x, t, torch.randn(5, 4))
    assert x0.shape == x.shape and D(x0, t, x).shape == (5, 1)
    # An image is one point of C*H*W numbers: G of a batch equals G of each image alone.
    z = torch.randn(5, 4)
    assert torch.allclose(G(x, t, z)[2:3], G(x[2:3], t[2:3], z[2:3]), atol=1e-6)


def test_an_mlp_run_trains_resumes_exactly_and_samples(tmp_path):
    config = tiny("stackmnist", tmp_path, **MLP, batch_size=4, kimg=0.016)
    run = assert_resumes_exactly(config, stop_after=2, total_steps=4)
    assert "MLP" in describe_checkpoint(run)
    G, loaded = load_generator(run)
    assert isinstance(G, MLPGenerator) and loaded.mlp_width == 16
    first, second = (np.concatenate(list(generate(G, loaded, seeds, batch=2))) for seeds in ([0, 1, 2], [2]))
    assert first.shape == (3, 16, 16, 3) and first.dtype == np.uint8
    assert np.array_equal(first[2], second[0])  # an image is a function of its seed, in any batch


@pytest.mark.parametrize("flags, message", [
    (dict(cond=True), "the MLP networks .* are unconditional"),
    (dict(class_loss=1.0), "--class_loss needs the convolutional discriminator"),
    (dict(mlp_width=0), "--mlp_width must be a positive integer"),
    (dict(mlp_depth=True), "--mlp_depth must be a positive integer"),
    (dict(num_disc_layers=2), "--num_disc_layers counts the convolutional discriminator's blocks"),
    (dict(net_type="mlpp"), "--net_type must be normal, wavelet or mlp"),
    (dict(discriminator="tiny"), "--discriminator must be auto, small, large or mlp"),
])
def test_mlp_settings_that_cannot_work_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        make_config("stackmnist", image_size=16, **{**MLP, **flags})


def test_the_mlp_generator_runs_beside_the_convolutional_discriminator():
    config = make_config("stackmnist", image_size=16, net_type="mlp", mlp_width=16, ngf=4, t_emb_dim=8, nz=4)
    assert config.discriminator_kind == "Discriminator_small"
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    assert build_discriminator(config)(build_generator(config)(x, t, torch.randn(2, 4)), t, x).shape == (2, 1)


def test_the_stackmnist16_preset_trains_its_mlps_on_16_px_stacks():
    config = make_config("stackmnist16", batch_size=4)
    trainer = Trainer(config)
    assert isinstance(trainer.G, MLPGenerator) and isinstance(trainer.D, MLPDiscriminator)
    assert (config.image_size, config.num_timesteps, config.ema_decay) == (16, 4, 0.99)
    before = [p.clone() for p in trainer.G.parameters()]
    stats = trainer.run_iteration(torch.rand(4, 3, 16, 16) * 2 - 1)
    assert torch.isfinite(stats["loss/G"]) and torch.isfinite(stats["loss/D"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.G.parameters(), strict=True))
