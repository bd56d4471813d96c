"""FID through clean-fid with a tiny stand-in feature extractor, and the offline errors for Inception/statistics."""

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.config import replace
from ddgan.data import read_image_array, write_image_array
from ddgan.data.demo import DemoShapes
from ddgan.models import load_generator
from eval import fid as fidlib
from eval import fid_stats, inception
from eval.inception import batch_features
from eval.manifold import manifold_metrics, seeded_subset
from eval.sample import sample
from tests.helpers import TinyFeatures, write_checkpoint


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


# ------------------------------------------------------------------------ precision, recall, density, coverage

def demo_features(extractor, count: int, seed: int, shapes=None) -> np.ndarray:
    """Features of demo-shape images (only those of `shapes`, if given)."""
    dataset = DemoShapes(16, size=count, seed=seed)
    images = dataset.images.permute(0, 2, 3, 1).numpy()
    if shapes is not None:
        images = images[[shape in shapes for shape in dataset.shapes]]
    return np.concatenate([batch_features(images[i:i + 100], extractor, "clean", "cpu")
                           for i in range(0, len(images), 100)])


def test_precision_and_recall_behave(extractor, monkeypatch):
    # Shapes of the demo's first, narrower variety (centres +-0.05, radii 0.30-0.36): 200 draws cover each of
    # those tightly, where the demo's wider shapes would need several times as many for the same check.
    monkeypatch.setattr("ddgan.data.demo.CENTRE_JITTER", 0.05)
    monkeypatch.setattr("ddgan.data.demo.RADII", (0.30, 0.36))
    real = demo_features(extractor, 200, seed=0)
    itself = manifold_metrics(real, real)
    assert itself == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    noise = np.random.default_rng(0).integers(0, 256, (200, 16, 16, 3), dtype=np.uint8)
    unlike = manifold_metrics(real, np.concatenate([batch_features(noise[i:i + 100], extractor, "clean", "cpu")
                                                    for i in range(0, 200, 100)]))
    assert unlike["precision"] < 0.05 and unlike["recall"] < 0.05 and unlike["coverage"] < 0.05
    # Other draws of all four shapes cover the real ones; draws of two shapes miss about half of them.
    every_shape = manifold_metrics(real, demo_features(extractor, 200, seed=1))
    two_shapes = manifold_metrics(real, demo_features(extractor, 400, seed=1, shapes=("circle", "square")))
    assert every_shape["recall"] > 0.85 and two_shapes["recall"] < 0.65
    assert every_shape["coverage"] > 0.75 and two_shapes["coverage"] < 0.5
    assert two_shapes["precision"] > 0.8  # what it draws is still real-looking


def test_prdc_from_kept_reference_features(run, extractor, tmp_path, capsys):
    """make-stats --features keeps a seeded subset; fid --prdc then needs no second pass over the data."""
    ckpt, samples = run
    kept = fidlib.make_stats(str(samples), str(tmp_path / "kept.npz"), features=25, batch=16,
                             feature_extractor=extractor, device="cpu", verbose=False)
    every = fidlib.dataset_features(fidlib.open_reference(str(samples)), extractor, batch=16, device="cpu",
                                    verbose=False)
    with np.load(kept) as saved:
        assert saved["features"].shape == (25, 24) and saved["features"].dtype == np.float32
        np.testing.assert_array_equal(saved["features"], seeded_subset(every, 25, seed=0))
    from_stats = fidlib.fid(str(ckpt), stats=kept, n=40, batch=20, prdc=True, prdc_n=25, device="cpu",
                            feature_extractor=extractor, verbose=False)
    from_images = fidlib.fid(str(ckpt), ref=str(samples), n=40, batch=20, prdc=True, prdc_n=25, device="cpu",
                             feature_extractor=extractor, verbose=False)
    printed = capsys.readouterr().out
    assert f"precision {from_images['precision']:.4f}, recall" in printed
    assert json.loads(printed.splitlines()[-1]) == from_images
    # The samples are the reference images themselves (seeds 0..39): nearly all real-looking and covered.
    assert from_stats["precision"] > 0.9 and from_stats["recall"] > 0.8
    assert from_stats["prdc_n"] == 25 and from_stats["nearest_k"] == 3
    assert abs(from_stats["value"] - from_images["value"]) < 1e-6
    for metric in ("precision", "recall", "density", "coverage"):  # the same seeded 25 reference features
        assert from_stats[metric] == from_images[metric], metric


def test_prdc_errors(run, stats, extractor, capsys):
    ckpt, _ = run
    with pytest.raises(ValueError, match=r"hold no reference features.*make-stats DATA --out=STATS.npz --features"):
        fidlib.fid(str(ckpt), stats=stats, n=40, prdc=True, device="cpu", feature_extractor=extractor)
    with pytest.raises(ValueError, match="--prdc_n must be an integer >= 2"):
        fidlib.fid(str(ckpt), stats=stats, prdc=True, prdc_n=1)
    with pytest.raises(ValueError, match="more than --nearest_k=3 generated samples"):
        manifold_metrics(np.zeros((10, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="--features must be a count"):
        fidlib.make_stats("demo", "x.npz", features=-1)


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
    monkeypatch.setattr(fid_stats, "cleanfid_stats_folder", lambda: tmp_path / "stats")
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
    assert offline == [f"{fid_stats.STATS_URL}/cifar10_clean_train_32.npz"]


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


def test_statistics_no_server_has_are_refused_before_any_download(offline, run, stats, tmp_path, capsys):
    with pytest.raises(ValueError) as error:
        fidlib.reference_stats("cifar10", "clean", 16, "train")
    message = str(error.value)
    assert "clean-fid has no cifar10_clean_train_16.npz" in message
    assert "--split=train at 32 px; --split=test at 32 px" in message
    assert "ddgan fid make-stats cifar10 --image_size=16 --out=cifar10-16.npz" in message
    with pytest.raises(ValueError, match=r"no statistics of that name \(it has cifar10, ffhq, lsun_church"):
        fidlib.reference_stats("cifar-10", "clean", 32)
    with pytest.raises(ValueError, match="--split=trainval at 256 px or 1024 px"):
        fidlib.reference_stats("ffhq", "clean", 512, "trainval")
    ckpt, _ = run  # an 8 px model asked for cifar10 statistics: one line, exit 2, nothing fetched
    with pytest.raises(SystemExit) as exited:
        fidlib.main([str(ckpt), "--stats=cifar10", "--device=cpu", "--n=4"])
    assert exited.value.code == 2 and "clean-fid has no cifar10_clean_train_8.npz" in capsys.readouterr().err
    assert offline == []
    # A file already in clean-fid's folder is used whether or not the list names it.
    (tmp_path / "stats").mkdir()
    np.savez(tmp_path / "stats" / "mine_clean_custom_8.npz", mu=np.zeros(3), sigma=np.eye(3))
    assert fidlib.reference_stats("mine", "clean", 8, "custom").sigma.shape == (3, 3)


def test_training_evaluator_checks_the_statistics_up_front(stats, tmp_path):
    from ddgan.config import make_config

    config = make_config("cifar10", fid_every=1.0, image_size=16, fid_stats="cifar10")
    with pytest.raises(ValueError, match="clean-fid has no cifar10_clean_train_16.npz"):
        fidlib.training_evaluator(config)
    with pytest.raises(ValueError, match="does not exist; make it with `ddgan fid make-stats DATA --image_size=16"):
        fidlib.training_evaluator(replace(config, fid_stats=str(tmp_path / "absent.npz")))
    with pytest.raises(ValueError, match="--fid_prdc: the statistics .* hold no reference features"):
        fidlib.training_evaluator(replace(config, fid_stats=stats, fid_prdc=True))
    with pytest.raises(ValueError, match="--fid_prdc: clean-fid's statistics --fid_stats=cifar10 hold no"):
        fidlib.training_evaluator(replace(config, image_size=32, fid_prdc=True))
    assert callable(fidlib.training_evaluator(replace(config, fid_stats=stats)))


def test_training_evaluator_measures_every_metric(run, extractor, tmp_path):
    ckpt, samples = run
    G, config = load_generator(ckpt)
    kept = fidlib.make_stats(str(samples), str(tmp_path / "kept.npz"), features=40, feature_extractor=extractor,
                             device="cpu", verbose=False)
    config = replace(config, fid_every=1.0, fid_samples=40, fid_stats=kept, fid_prdc=True)
    values = fidlib.training_evaluator(config, feature_extractor=extractor)(G, config)
    assert sorted(values) == ["coverage", "density", "fid", "precision", "recall"]
    assert abs(values["fid"]) < 1e-6 and values["precision"] == values["recall"] == 1.0  # its own samples
