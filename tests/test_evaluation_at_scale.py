"""Sampling and FID split over torchrun processes (gloo on the CPU) give one process's outputs; the rounds behind it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.config import make_config
from ddgan.data import read_image_array, write_image_array
from ddgan.data.demo import DemoShapes
from ddgan.models import checkpoint, load_generator
from ddgan.runtime import distributed
from eval import fid as fidlib
from eval.sample import sample
from tests.helpers import REPO, TinyFeatures, free_port, tiny_generator, write_checkpoint


@pytest.mark.parametrize("count, batch", [(7, 2), (1, 4), (12, 3), (5, 5)])
def test_round_shares_deal_every_batch_to_one_rank(count, batch):
    for world_size in (1, 2, 3):
        contexts = [distributed.Context(rank, world_size) for rank in range(world_size)]
        shares = [distributed.round_shares(count, batch, context) for context in contexts]
        assert len({len(s) for s in shares}) == 1  # every rank takes part in every round
        # Round r, rank k holds batch r * world_size + k: the batches of one process, in order.
        dealt = [share for round_shares in zip(*shares, strict=True) for share in round_shares if len(share)]
        assert dealt == [range(start, min(start + batch, count)) for start in range(0, count, batch)]


def write_conditional_checkpoint(folder: Path) -> Path:
    config = make_config("demo", cond=True, num_classes=3, class_names=("ring", "box", "star"), image_size=8,
                         num_channels_dae=8, ch_mult=[1, 2], nz=4, z_emb_dim=8, t_emb_dim=8, n_mlp=1, ngf=8)
    state = tiny_generator(config, seed=3).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    return checkpoint.save_atomic({"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
                                   "config": config.to_dict(), "G": state, "G_ema": state, "images_seen": 0,
                                   "kimg": 0.0}, folder / "ckpt-000000000000.pt")


# Every command as a user runs it, in each of the two processes; rank 0 keeps the FID record.
TWO_PROCESSES = """
import json, os, sys
from pathlib import Path
from ddgan.runtime import distributed
from ddgan.cli import main
from eval import fid as fidlib
from tests.helpers import TinyFeatures

folder, ckpt, conditional, reference = Path(sys.argv[1]), *sys.argv[2:5]
context = distributed.setup("cpu")  # the commands join this group and leave it to us

def ddgan(*argv):
    try:
        main(list(argv))
    except SystemExit as exit:
        assert not exit.code, argv

ddgan("sample", ckpt, f"--out={folder}/two.npz", "--n=7", "--batch=2", "--device=cpu")
ddgan("sample", ckpt, f"--out={folder}/two-folder", "--seeds=3-7", "--batch=2", "--device=cpu")
ddgan("sample", conditional, f"--out={folder}/two-cond.npz", "--n=3", "--batch=2", "--device=cpu")
ddgan("sample", ckpt, f"--out={folder}/two-idle.npz", "--seeds=5-5", "--batch=4", "--device=cpu")  # rank 1 idles
record = fidlib.fid(ckpt, ref=reference, n=9, batch=2, prdc=True, nearest_k=2, device="cpu",
                    feature_extractor=TinyFeatures(), verbose=False)
if context.is_main:
    (folder / "two-fid.json").write_text(json.dumps(record))
fidlib.make_stats(reference, f"{folder}/two-stats.npz", features=8, batch=5, device="cpu",
                  feature_extractor=TinyFeatures(), verbose=False)
try:  # a reference only rank 0 reads: every rank stops with its error instead of waiting
    main(["fid", ckpt, f"--stats={folder}/absent.npz", "--n=4", "--device=cpu"])
except SystemExit as exit:
    (folder / f"exit{context.rank}.txt").write_text(str(exit.code))
distributed.teardown()
"""


def test_two_processes_write_what_one_process_writes(tmp_path, seeded_single_thread):
    ckpt = write_checkpoint(tmp_path / "run")
    conditional = write_conditional_checkpoint(tmp_path / "cond")
    # Reference images: half like the samples, half from another generator, so recall is neither 0 nor 1.
    alike = sample(str(ckpt), out=str(tmp_path / "alike.npz"), seeds="20-25", device="cpu")
    unlike = sample(str(write_checkpoint(tmp_path / "other", seed=5)), out=str(tmp_path / "unlike.npz"), n=6,
                    device="cpu")
    reference = str(tmp_path / "ref.npz")
    write_image_array(reference, np.concatenate([read_image_array(alike), read_image_array(unlike)]))
    script = tmp_path / "two_processes.py"
    script.write_text(TWO_PROCESSES)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(script), str(tmp_path), str(ckpt), str(conditional), reference]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(tmp_path / f"exit{rank}.txt").read_text() for rank in (0, 1)] == ["2", "2"]
    assert result.stderr.count("absent.npz' does not exist; make it with `ddgan fid make-stats") == 2

    # One process with the same flags and, as torchrun gives each CPU process, one thread: on the CPU, oneDNN's
    # kernels (chosen by batch size and thread count) may round a rare pixel the other way otherwise.
    sample(str(ckpt), out=str(tmp_path / "one.npz"), n=7, batch=2, device="cpu")
    sample(str(ckpt), out=str(tmp_path / "one-folder"), seeds="3-7", batch=2, device="cpu")
    sample(str(conditional), out=str(tmp_path / "one-cond.npz"), n=3, batch=2, device="cpu")
    sample(str(ckpt), out=str(tmp_path / "one-idle.npz"), seeds=[5], batch=4, device="cpu")
    for name in ("", "-cond", "-idle"):
        assert (tmp_path / f"two{name}.npz").read_bytes() == (tmp_path / f"one{name}.npz").read_bytes(), name
    with np.load(tmp_path / "two-cond.npz") as two:
        assert two["y"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and two["classes"].tolist() == ["ring", "box", "star"]
    one_folder = sorted(p.name for p in (tmp_path / "one-folder").iterdir())
    assert one_folder == [f"{seed:06d}.png" for seed in range(3, 8)]
    for name in one_folder:
        assert (tmp_path / "two-folder" / name).read_bytes() == (tmp_path / "one-folder" / name).read_bytes()

    one_stats = fidlib.make_stats(reference, str(tmp_path / "one-stats.npz"), features=8, batch=5, device="cpu",
                                  feature_extractor=TinyFeatures(), verbose=False)
    with np.load(one_stats) as one, np.load(tmp_path / "two-stats.npz") as two:
        for key in ("mu", "sigma", "features"):
            np.testing.assert_array_equal(one[key], two[key])
    one = fidlib.fid(str(ckpt), ref=reference, n=9, batch=2, prdc=True, nearest_k=2, device="cpu",
                     feature_extractor=TinyFeatures(), verbose=False)
    two = json.loads((tmp_path / "two-fid.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert abs(two["value"] - one["value"]) <= 1e-6 * max(1.0, abs(one["value"])) and one["value"] > 0
    for metric in ("precision", "recall", "density", "coverage"):
        assert two[metric] == one[metric], metric
    assert 0 < one["recall"] < 1 and 0 < one["coverage"] < 1 and 0 < one["precision"] <= 1


def test_features_come_back_in_order_through_clean_fids_resizing():
    """Flat images of value 10 * batch index through a mean-pixel 'extractor': the order shows in the features."""
    context = distributed.Context()
    shares = distributed.round_shares(5, 2, context)
    batches = iter([np.full((len(share), 8, 8, 3), 10 * share.start, np.uint8) for share in shares])

    def extractor(x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 299, 299)  # clean-fid resized them
        return x.mean((1, 2, 3))[:, None].repeat(1, 2)

    features = fidlib.gathered_features(batches, shares, 5, extractor, "clean", torch.device("cpu"), context, "",
                                        verbose=False)
    np.testing.assert_allclose(features, np.array([[0, 0], [0, 0], [20, 20], [20, 20], [40, 40]]), atol=0.5)


def test_fid_of_a_conditional_model_draws_the_chosen_classes_in_turn(tmp_path):
    conditional = write_conditional_checkpoint(tmp_path / "cond")
    boxes = sample(str(conditional), out=str(tmp_path / "boxes.npz"), n=12, class_="box", device="cpu")
    with np.load(boxes) as saved:
        assert saved["y"].tolist() == [1] * 12
    kwargs = dict(ref=boxes, n=12, batch=5, device="cpu", feature_extractor=TinyFeatures(), verbose=False)
    same = fidlib.fid(str(conditional), class_="box", **kwargs)["value"]
    every_class = fidlib.fid(str(conditional), **kwargs)["value"]
    assert abs(same) < 1e-6 < every_class


TRAINING_WITH_FID = """
import sys
from ddgan.config import make_config
from ddgan.training.loop import run_training
from eval.fid import training_evaluator
from tests.helpers import TinyFeatures
from tests.helpers import TINY

config = make_config("demo", **TINY, data="demo", image_size=8, ch_mult=[1, 2], batch_size=4, kimg=0.008,
                     fid_every=0.004, fid_samples=10, fid_stats=sys.argv[2], fid_prdc=True, outdir=sys.argv[1])
run_training(config, device="cpu", evaluate_fid=training_evaluator(config, feature_extractor=TinyFeatures()))
"""


def test_fid_during_a_two_process_run_is_one_process_fid(tmp_path, seeded_single_thread):
    """--fid_every under torchrun: both ranks draw, rank 0 logs all five numbers, equal to one process's."""
    images = DemoShapes(8, size=30, seed=4).images.permute(0, 2, 3, 1).numpy()
    write_image_array(tmp_path / "real.npz", images)
    stats = fidlib.make_stats(str(tmp_path / "real.npz"), str(tmp_path / "stats.npz"), features=30,
                              feature_extractor=TinyFeatures(), device="cpu", verbose=False)
    script = tmp_path / "train_with_fid.py"
    script.write_text(TRAINING_WITH_FID)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(script), str(tmp_path / "runs"), stats]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    logged = [entry for entry in logged if "recall" in entry]
    assert len(logged) == 2 and all({"fid", "precision", "density", "coverage"} <= set(e) for e in logged)
    # The last evaluation saw the final EMA generator: one process measures the same.
    G, config = load_generator(run_dir)
    alone = fidlib.training_evaluator(config, feature_extractor=TinyFeatures())(G, config)
    assert abs(alone["fid"] - logged[-1]["fid"]) <= 1e-6 * max(1.0, alone["fid"])
    for metric in ("precision", "recall", "density", "coverage"):
        assert alone[metric] == logged[-1][metric], metric
