"""FID through clean-fid with a tiny stand-in feature extractor, and the offline errors for Inception/statistics."""

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.data import read_image_array, write_image_array
from ddgan.models import load_generator
from eval import fid as fidlib
from eval import inception
from eval.sample import sample
from tests.test_sample import write_checkpoint


class TinyFeatures(torch.nn.Module):
    """A fixed random strided conv and average pooling: 24-dim features of 299x299 images in [0, 255]."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 24, kernel_size=23, stride=23).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x / 255 - 0.5)).mean((2, 3))


@pytest.fixture(scope="module")
def extractor():
    return TinyFeatures()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny checkpoint and 40 of its samples (seeds 0..39) as an image array."""
    folder = tmp_path_factory.mktemp("fidrun")
    ckpt = write_checkpoint(folder / "run")
    samples = sample(str(ckpt), out=str(folder / "samples.npz"), n=40, batch=20, device="cpu")
    return ckpt, Path(samples)


@pytest.fixture(scope="module")
def stats(run, extractor):
    _, samples = run
    return fidlib.make_stats(str(samples), str(samples.with_name("stats.npz")), batch=16, device="cpu",
                             feature_extractor=extractor, verbose=False)


def test_make_stats_round_trip(run, stats, extractor):
    _, samples = run
    with np.load(stats) as saved:
        assert str(saved["mode"]) == "clean" and int(saved["image_size"]) == 8 and int(saved["num_images"]) == 40
        mu, sigma = saved["mu"], saved["sigma"]
    assert mu.shape == (24,) and sigma.shape == (24, 24) and np.allclose(sigma, sigma.T)
    features = fidlib.dataset_features(fidlib.open_reference(str(samples)), extractor, batch=40, device="cpu",
                                       verbose=False)
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-6, atol=1e-12)
    loaded = fidlib.load_stats(stats, "clean", dims=24)
    np.testing.assert_array_equal(loaded.mu, mu)
    with pytest.raises(ValueError, match="--mode=clean"):
        fidlib.load_stats(stats, "legacy_pytorch")
    with pytest.raises(ValueError, match="--overwrite"):
        fidlib.make_stats(str(samples), stats, feature_extractor=extractor)


def test_fid_of_samples_against_their_own_statistics_is_zero(run, stats, extractor):
    ckpt, _ = run
    G, config = load_generator(ckpt)
    G.train()
    rng = torch.get_rng_state()
    value = fidlib.fid_of_generator(G, config, stats, n=40, batch=16, device="cpu", feature_extractor=extractor,
                                    verbose=False)
    trace = float(np.trace(np.load(stats)["sigma"]))
    assert abs(value) < 1e-3 * trace
    assert G.training, "the generator must come back in the mode it was given in"
    assert torch.equal(rng, torch.get_rng_state()), "FID must not disturb the caller's random stream"


def test_fid_grows_with_a_shift(run, stats, extractor, tmp_path):
    ckpt, samples = run
    G, config = load_generator(ckpt)
    other_seeds = fidlib.fid_of_generator(G, config, stats, seeds=range(100, 140), batch=20, device="cpu",
                                          feature_extractor=extractor, verbose=False)
    brighter = tmp_path / "brighter.npz"
    write_image_array(brighter, np.clip(read_image_array(samples).astype(int) + 60, 0, 255).astype(np.uint8))
    brighter_stats = fidlib.make_stats(str(brighter), str(tmp_path / "b.npz"), feature_extractor=extractor,
                                       device="cpu", verbose=False)
    shifted = fidlib.fid_of_generator(G, config, brighter_stats, n=40, batch=20, device="cpu",
                                      feature_extractor=extractor, verbose=False)
    trace = float(np.trace(np.load(stats)["sigma"]))
    assert other_seeds > 1e-3 * trace
    assert shifted > 10 * other_seeds


def test_fid_command_with_ref_prints_json(run, extractor, capsys):
    ckpt, samples = run
    returned = fidlib.fid(str(ckpt), ref=str(samples), n=40, batch=20, device="cpu", feature_extractor=extractor,
                          verbose=False)
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record == returned and abs(record["value"]) < 1e-6 and record["processes"] == 1
    assert record["n"] == 40 and record["seeds"] == "0-39" and record["mode"] == "clean"


def test_stats_errors(run, tmp_path):
    _, samples = run
    with pytest.raises(ValueError, match="pass it as --ref"):
        fidlib.reference_stats(str(samples))
    with pytest.raises(ValueError, match="make-stats"):
        fidlib.reference_stats(str(tmp_path / "absent.npz"))
    with pytest.raises(ValueError, match="--mode must be one of"):
        fidlib.make_stats(str(samples), str(tmp_path / "s.npz"), mode="tf")
    ckpt, _ = run
    with pytest.raises(ValueError, match="fid_stats is empty"):
        fidlib.fid(str(ckpt), device="cpu")  # the demo preset names no statistics
    with pytest.raises(ValueError, match="not both"):
        fidlib.fid(str(ckpt), stats="cifar10", ref=str(samples))


# ------------------------------------------------------------------------------------ offline errors

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Inception weights or statistics anywhere, and any download fails at once as it would offline."""
    calls = []

    def refuse(url, path, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.delenv("DDGAN_INCEPTION", raising=False)
    monkeypatch.setattr(inception, "download", refuse)
    monkeypatch.setattr(inception, "cleanfid_inception_folder", lambda: tmp_path / "inception")
    monkeypatch.setattr(fidlib, "cleanfid_stats_folder", lambda: tmp_path / "stats")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return calls


def test_missing_inception_names_file_folder_and_url(offline, tmp_path):
    with pytest.raises(inception.MissingFileError) as error:
        inception.inception_extractor("clean", "cpu")
    message = str(error.value)
    assert "inception-2015-12-05.pt" in message and str(tmp_path / "inception") in message
    assert inception.INCEPTION_URL in message and "--inception" in message and "no network" in message
    assert offline == [inception.INCEPTION_URL]
    with pytest.raises(inception.MissingFileError, match="downloading is off"):
        inception.inception_extractor("clean", "cpu", allow_download=False)
    assert len(offline) == 1


def test_missing_inception_path_given(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("DDGAN_INCEPTION", str(tmp_path / "nowhere.pt"))
    with pytest.raises(inception.MissingFileError, match="nowhere.pt"):
        inception.inception_extractor("clean", "cpu")
    assert offline == []


def test_missing_pytorch_fid_weights(offline, tmp_path):
    with pytest.raises(inception.MissingFileError) as error:
        inception.inception_extractor("legacy_pytorch", "cpu")
    assert inception.PYTORCH_FID_FILE in str(error.value) and str(tmp_path / "hub" / "checkpoints") in str(error.value)


def test_missing_named_stats(offline, tmp_path):
    with pytest.raises(inception.MissingFileError) as error:
        fidlib.reference_stats("cifar10", "clean", 32, "train")
    assert "cifar10_clean_train_32.npz" in str(error.value) and str(tmp_path / "stats") in str(error.value)
    assert offline == [f"{fidlib.STATS_URL}/cifar10_clean_train_32.npz"]


def test_fid_command_reports_missing_inception(offline, run, stats, capsys):
    ckpt, _ = run
    with pytest.raises(SystemExit) as exited:
        fidlib.main([str(ckpt), f"--stats={stats}", "--device=cpu", "--n=40"])
    assert exited.value.code == 2
    assert "ddgan fid: error: Inception weights inception-2015-12-05.pt not found" in capsys.readouterr().err


def test_local_inception_file_under_any_name(offline, tmp_path):
    """--inception may name the TorchScript file anything; clean-fid's wrapper still loads it."""

    class Layers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2048)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x, return_features: bool = False):
            return self.layers(x)

    path = tmp_path / "my-inception.pt"
    torch.jit.save(torch.jit.script(Net()), str(path))
    model = inception.inception_extractor("clean", "cpu", inception=str(path))
    assert model(torch.rand(2, 3, 299, 299) * 255).shape == (2, 2048)
    assert offline == []
