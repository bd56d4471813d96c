"""eval.conditioning: how much the class label decides in G and in D."""

import json

import pytest
import torch

from ddgan.training.loop import run_training
from eval.conditioning import class_share, measure, spread
from tests.helpers import tiny


def test_class_share_is_one_when_only_the_class_matters_and_zero_when_only_the_seed_does():
    by_class = torch.randn(5, 1, 3, 4).expand(5, 7, 3, 4)  # [classes, seeds, ...]
    by_seed = torch.randn(1, 7, 3, 4).expand(5, 7, 3, 4)
    assert class_share(by_class) == pytest.approx(1.0)
    assert class_share(by_seed) == pytest.approx(0.0, abs=1e-12)
    assert 0.2 < class_share(by_class + by_seed) < 0.8
    assert spread(torch.ones(6, 2, 2)) == 0 and spread(torch.randn(4000, 3)) == pytest.approx(1, abs=0.1)


def test_measure_every_checkpoint_of_a_conditional_run(tmp_path, capsys):
    run_dir = run_training(tiny("demo", tmp_path, cond=True, kimg=0.016, snapshot_kimg=0.008, keep_checkpoints=5))
    capsys.readouterr()
    reports = measure(str(run_dir), n=4, block=2)
    assert [r["kimg"] for r in reports] == [0.008, 0.016]  # every checkpoint, oldest first
    for report in reports:
        for key in ("class_share_style", "class_share_first", "class_share_image"):
            assert 0 <= report[key] <= 1
        assert report["within_class_spread"] >= 0
        assert {"d_label_gap_t0", "d_label_gap_t1", "d_real_fake_gap_t1", "d_block_gain_t0"} <= set(report)
    printed = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line) for line in printed] == reports  # one JSON line per checkpoint


def test_measure_refuses_an_unconditional_run(tmp_path):
    run_dir = run_training(tiny("demo", tmp_path, kimg=0.004))
    with pytest.raises(ValueError, match="unconditional"):
        measure(str(run_dir), n=2)


def test_z_share_is_zero_for_a_generator_that_ignores_z_and_positive_otherwise(tmp_path):
    from ddgan.models import build_generator
    from eval.conditioning import z_share

    config = tiny("demo", tmp_path)
    torch.manual_seed(0)
    G = build_generator(config).eval()

    class IgnoresZ(torch.nn.Module):
        def forward(self, x, t, z, *labels):
            return G(x, t, torch.zeros_like(z), *labels)

    with torch.no_grad():  # a fresh G's modulation starts at the identity (z is not heard): stir every weight
        for parameter in G.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    ignoring = z_share(IgnoresZ(), config, n=4, bases=3)
    assert ignoring == {"z_share_image": 0.0, "z_share_first": 0.0}
    hearing = z_share(G, config, n=4, bases=3)
    assert 0 < hearing["z_share_first"] <= 1 and 0 < hearing["z_share_image"] <= 1
