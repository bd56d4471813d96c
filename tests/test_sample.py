"""`ddgan sample`: seeds, per-seed determinism, output formats and the errors users meet."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddgan import sampling
from ddgan.data import read_image_array
from ddgan.models import checkpoint, load_generator
from eval import sample as sample_command
from tests.helpers import tiny_config, write_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def reference(ckpt):
    """Seeds 0..5 sampled in one batch: what every other split must reproduce."""
    G, config = load_generator(ckpt)
    return np.concatenate(list(sampling.generate(G, config, range(6), batch=6, device="cpu", progress=False)))


# ----------------------------------------------------------------------------------------------- seeds

@pytest.mark.parametrize("spec, expected", [
    (3, [0, 1, 2]), ("0-4", [0, 1, 2, 3, 4]), ("1,5,7", [1, 5, 7]), ((1, 5, 7), [1, 5, 7]),
    ("3,10-12", [3, 10, 11, 12]), ("7", [7]), ([9, 2], [9, 2]),
])
def test_parse_seeds(spec, expected):
    assert sampling.parse_seeds(spec) == expected


@pytest.mark.parametrize("spec, words", [
    ("5-2", "empty"), ("a-b", "cannot read"), ("1,1", "repeats"), (0, ">= 1"), ("-3", "cannot read"),
    ([-1], "0.."), ("", "no seeds"), (True, "count"),
])
def test_parse_seeds_rejects(spec, words):
    with pytest.raises(ValueError, match="--seeds") as error:
        sampling.parse_seeds(spec)
    assert words in str(error.value)


def test_seed_list_n_and_seeds():
    assert sampling.seed_list(None, None) == list(range(64))
    assert sampling.seed_list(3, None) == [0, 1, 2]
    assert sampling.seed_list(2, "4-5") == [4, 5]
    with pytest.raises(ValueError, match="--n=3 disagrees"):
        sampling.seed_list(3, "4-5")
    with pytest.raises(ValueError, match="--n must be"):
        sampling.seed_list(0, None)


def test_seed_noise_depends_on_its_seed_only():
    config = tiny_config()
    x_T, zs, noises = sampling.seed_noise([3, 1, 4], config)
    T = config.num_timesteps
    assert x_T.shape == (3, 3, 8, 8) and zs.shape == (T, 3, 4) and noises.shape == (T, 3, 3, 8, 8)
    alone = sampling.seed_noise([1], config)
    torch.testing.assert_close(alone[0][0], x_T[1], rtol=0, atol=0)
    torch.testing.assert_close(alone[1][:, 0], zs[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(alone[2][:, 0], noises[:, 1], rtol=0, atol=0)
    assert not torch.equal(x_T[0], x_T[1]) and not torch.equal(noises[0, 0], noises[1, 0])
    assert abs(float(x_T.std()) - 1) < 0.2


def test_to_uint8_inverts_the_data_pipeline_and_clamps():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(sampling.to_uint8(u.float() / 127.5 - 1), u)
    assert sampling.to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]


# ----------------------------------------------------------------------------------------- determinism

def test_images_are_not_flat(reference):
    assert reference.shape == (6, 8, 8, 3) and reference.dtype == np.uint8
    assert reference.std() > 10 and len({im.tobytes() for im in reference}) == 6


@pytest.mark.parametrize("batch, prefetch", [(2, 0), (4, 0), (1, 3)])
def test_same_images_for_any_batch_size_and_prefetch(ckpt, reference, batch, prefetch):
    G, config = load_generator(ckpt)
    batches = sampling.generate(G, config, range(6), batch=batch, device="cpu", progress=False, prefetch=prefetch)
    np.testing.assert_array_equal(np.concatenate(list(batches)), reference)


def test_prefetched_keeps_order_and_draws_ahead():
    import threading
    import time

    def draw(chunk):
        time.sleep(0.01 * (3 - chunk % 3))  # later chunks finish first
        return chunk * 10, threading.current_thread().name

    results = list(sampling.fast.prefetched(range(7), draw, depth=3))
    assert [value for value, _ in results] == [0, 10, 20, 30, 40, 50, 60]
    assert all(name != threading.main_thread().name for _, name in results)
    assert list(sampling.fast.prefetched(range(3), lambda c: c + 1, depth=0)) == [1, 2, 3]


def test_same_images_for_any_split_or_order(ckpt, reference):
    G, config = load_generator(ckpt)
    later = next(sampling.generate(G, config, [5, 3], batch=2, device="cpu", progress=False))
    np.testing.assert_array_equal(later, reference[[5, 3]])


# ------------------------------------------------------------------------------------------- outputs

def test_npz_output_round_trip(ckpt, reference, tmp_path):
    out = sample_command.sample(str(ckpt), out=str(tmp_path / "s.npz"), seeds="0-5", batch=4, device="cpu")
    np.testing.assert_array_equal(read_image_array(out), reference)


def test_folder_output_named_by_seed(ckpt, reference, tmp_path):
    out = Path(sample_command.sample(str(ckpt), out=str(tmp_path / "pngs"), seeds="1,4", device="cpu"))
    assert sorted(p.name for p in out.iterdir()) == ["000001.png", "000004.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "000004.png")), reference[4])


def test_default_output_is_a_grid_next_to_the_checkpoint(ckpt, reference, capsys):
    sample_command.main([str(ckpt.parent), "--n=6", "--device=cpu"])
    expected = ckpt.parent / f"samples-{ckpt.stem}.png"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(expected)
    grid = np.asarray(Image.open(expected))
    assert grid.shape == (2 * 64, 3 * 64, 3)  # 6 images in a near-square 3-wide grid, 8 px enlarged 8 times
    np.testing.assert_array_equal(grid[64:128:8, 0:64:8], reference[3])
    np.testing.assert_array_equal(grid[0:64:8, 128:192:8], reference[2])
    np.testing.assert_array_equal(grid[71:128:8, 7:64:8], reference[3])  # nearest: every copy of a pixel
    sample_command.main([str(ckpt.parent), "--n=6", "--device=cpu", "--overwrite=True", "--scale=1"])
    np.testing.assert_array_equal(np.asarray(Image.open(expected))[8:16, 0:8], reference[3])


def test_save_grid_pads_and_handles_grayscale(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 6, 1), dtype=np.uint8)
    path = sampling.save_grid(images, tmp_path / "g.png", nrow=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (12, 12)
    np.testing.assert_array_equal(grid[8:12, 0:6], images[4, ..., 0])
    assert not grid[8:12, 6:12].any()
    assert not list(tmp_path.glob(".*.tmp"))


# -------------------------------------------------------------------------------------------- errors

def test_overwrite_protection(ckpt, tmp_path):
    out = tmp_path / "s.npz"
    out.write_bytes(b"precious")
    with pytest.raises(ValueError, match="--overwrite"):
        sample_command.sample(str(ckpt), out=str(out), n=1, device="cpu")
    assert out.read_bytes() == b"precious"
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        sample_command.sample(str(ckpt), out=str(folder), n=1, device="cpu")
    sample_command.sample(str(ckpt), out=str(out), n=1, device="cpu", overwrite=True)
    assert read_image_array(out).shape == (1, 8, 8, 3)


def test_empty_seed_range_names_the_flag(ckpt):
    with pytest.raises(ValueError, match=r"--seeds: the range 5-2 is empty"):
        sample_command.sample(str(ckpt), seeds="5-2")


@pytest.mark.parametrize("batch", [0, -1, 2.5])
def test_bad_batch(ckpt, batch):
    with pytest.raises(ValueError, match="--batch must be an integer >= 1"):
        sample_command.sample(str(ckpt), batch=batch)


def test_bad_out_suffix(ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"\*\.png"):
        sample_command.sample(str(ckpt), out=str(tmp_path / "x.jpg"))


def test_an_out_with_an_unknown_extension_is_refused_and_a_slash_makes_it_a_folder(ckpt, tmp_path):
    """A mistyped extension once wrote a folder of PNGs named x.jpg2; now it is an error naming what is written."""
    with pytest.raises(ValueError, match=r"\.jpg2 is not written here.*\*\.png.*\*\.npz.*x\.jpg2/"):
        sample_command.sample(str(ckpt), out=str(tmp_path / "x.jpg2"), n=1, device="cpu")
    assert not (tmp_path / "x.jpg2").exists()
    sample_command.sample(str(ckpt), out=f"{tmp_path / 'x.jpg2'}/", seeds="3", device="cpu")
    assert sorted(p.name for p in (tmp_path / "x.jpg2").iterdir()) == ["000003.png"]


def test_not_a_checkpoint(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(checkpoint.CheckpointError, match="not a PyTorch file"):
        sample_command.sample(str(text), device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": [1, 2]}, foreign)
    with pytest.raises(SystemExit) as exited:
        sample_command.main([str(foreign), "--device=cpu"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "ddgan sample: error: " in err and "not a ddgan checkpoint" in err
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        sample_command.sample(str(tmp_path / "missing.pt"))


def test_bf16_sampling_stays_close_to_fp32(ckpt):
    # The fast path's tolerance: bf16 autocast changes uint8 pixels by a few levels at most on average.
    G, config = load_generator(ckpt)
    fp32 = np.concatenate(list(sampling.generate(G, config, range(8), batch=8, device="cpu", progress=False)))
    bf16 = np.concatenate(list(sampling.generate(G, config, range(8), batch=8, device="cpu", amp="bf16",
                                                 progress=False)))
    difference = np.abs(fp32.astype(np.int32) - bf16.astype(np.int32))
    assert difference.mean() < 4 and np.percentile(difference, 99) < 24


def test_cuda_graph_needs_cuda(ckpt):
    G, config = load_generator(ckpt)
    with pytest.raises(ValueError, match="--cuda_graph needs a CUDA device"):
        next(sampling.generate(G, config, range(2), batch=2, device="cpu", cuda_graph=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("amp", [None, "bf16"])
def test_cuda_graph_replay_equals_eager(ckpt, amp):
    G, config = load_generator(ckpt, device="cuda")
    seeds = list(range(10))  # batch 4: the last batch of 2 is padded inside the graph
    eager = np.concatenate(list(sampling.generate(G, config, seeds, batch=4, device="cuda", amp=amp, progress=False)))
    graph = np.concatenate(list(sampling.generate(G, config, seeds, batch=4, device="cuda", amp=amp, progress=False,
                                                  cuda_graph=True)))
    assert np.abs(eager.astype(np.int32) - graph.astype(np.int32)).max() <= 1


def test_compiled_for_sampling_freezes_weights_on_the_cpu_only(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, options=None: seen.append(options) or model)
    net = torch.nn.Linear(2, 2)
    assert sampling.fast.compiled_for_sampling(net, "cpu") is net
    sampling.fast.compiled_for_sampling(net, torch.device("cuda"))
    assert seen == [{"freezing": True}, None]
