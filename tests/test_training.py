"""Short CPU training runs: every preset's shape at tiny width, exact resume, checkpoints, DDP with gloo."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ddgan.models import checkpoint, load_generator
from ddgan.training.loop import run_training
from ddgan.training.start import config_from_flags
from ddgan.training.trainer import Trainer
from tests.helpers import REPO, TINY, assert_resumes_exactly, free_port, tiny


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("preset", ["cifar10", "celeba256", "lsun256", "stackmnist", "demo"])
def test_short_run_per_preset_shape(preset, tmp_path):
    batch = 2 if preset in ("celeba256", "lsun256") else 4
    config = tiny(preset, tmp_path, batch_size=batch, kimg=0.002 * batch, lazy_reg=1)
    initial = Trainer(config)
    g0, d0 = flat(initial.G), flat(initial.D)
    run_dir = run_training(config)
    state = checkpoint.load(run_dir)
    assert state["step"] == 2 and state["images_seen"] == 2 * batch
    resumed = Trainer(config)
    resumed.load_state_dict(state)
    assert not torch.equal(flat(resumed.G), g0) and not torch.equal(flat(resumed.D), d0)
    assert torch.isfinite(flat(resumed.G)).all() and torch.isfinite(flat(resumed.D)).all()
    log = (run_dir / "log.jsonl").read_text()
    assert '"loss/D"' in log and '"loss/r1"' in log
    G, loaded_config = load_generator(run_dir)
    assert loaded_config == config
    assert torch.equal(flat(G), flat(resumed.G_ema))
    assert (run_dir / "samples-final.png").stat().st_size > 0
    assert list((run_dir / "tensorboard").iterdir())



def test_exact_resume(tmp_path):
    config = tiny("demo", tmp_path / "a", kimg=0.040, snapshot_kimg=0.016, lazy_reg=3, hflip=True)
    assert_resumes_exactly(config, stop_after=4, total_steps=10)


def test_resume_rejects_architecture_change(tmp_path):
    run_dir = run_training(tiny("demo", tmp_path, kimg=0.004))
    with pytest.raises(ValueError, match="change the architecture.*ngf: 4 -> 8"):
        run_training(config_from_flags(resume=str(run_dir), ngf=8))
    with pytest.raises(ValueError, match="did you mean --kimg"):
        run_training(config_from_flags(resume=str(run_dir), kmg=3))


def test_batch_must_divide_among_processes(tmp_path, monkeypatch):
    from ddgan.runtime import distributed

    monkeypatch.setattr(distributed, "setup", lambda device=None: distributed.Context(0, 3, 0, torch.device("cpu")))
    with pytest.raises(ValueError, match="--batch_size=4 is not divisible by the 3 processes"):
        run_training(tiny("demo", tmp_path))



DDP_CHECK = """
import sys, torch, torch.distributed as dist
from ddgan.diffusion import losses
from ddgan.runtime import distributed
from ddgan.config import make_config
from ddgan.training.trainer import NonFiniteError, Trainer
torch.set_num_threads(1)
context = distributed.setup("cpu")
config = make_config("demo", **eval(sys.argv[1]))
nan_rank = int(sys.argv[3])  # this rank's G loss is NaN at its second step (-1: none)
trainer = Trainer(config, context)
real_g_loss, skipped = losses.g_loss, 0
for step in range(3):
    torch.manual_seed(100 * step + context.rank)  # every rank sees different data
    bad = context.rank == nan_rank and step == 1
    losses.g_loss = (lambda logits: real_g_loss(logits) * float("nan")) if bad else real_g_loss
    try:
        labels = torch.randint(0, config.num_classes, (2,)) if config.cond else None
        trainer.run_iteration(torch.rand(2, 3, 8, 8) * 2 - 1, labels)
    except NonFiniteError:
        skipped += 1
assert skipped == (nan_rank >= 0), f"rank {context.rank} skipped {skipped} steps"
for net in (trainer.G, trainer.D, trainer.G_ema):
    mine = torch.cat([p.detach().flatten() for p in net.parameters()])
    others = [torch.zeros_like(mine) for _ in range(context.world_size)]
    dist.all_gather(others, mine)
    assert all(torch.equal(mine, o) for o in others), "parameters diverged across ranks"
# A file per rank: both ranks share stdout, where their lines can interleave mid-line.
with open(f"{sys.argv[2]}/rank{context.rank}.txt", "w") as f:
    f.write(f"identical after {trainer.step} steps")
del trainer
distributed.teardown()
"""


@pytest.mark.parametrize("variant, nan_rank", [({}, -1), (dict(conditional=False), 1),
                                              (dict(cond=True, num_classes=4), -1)],
                         ids=["conditional", "unconditional_with_a_nan_on_rank_1", "class_labels"])
def test_two_process_gloo_keeps_ranks_identical(tmp_path, variant, nan_rank):
    """Ranks stay in step: also with G's unused time projections, and when one rank's loss is NaN."""
    overrides = TINY | dict(image_size=8, ch_mult=[1, 2], batch_size=4, lazy_reg=2) | variant
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # torchrun runs a script file, so write the check to one.
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_CHECK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(script), repr(overrides), str(tmp_path), str(nan_rank)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = 3 if nan_rank < 0 else 2  # a skipped step does not count
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == f"identical after {steps} steps"


def test_fid_during_training_is_logged_and_keeps_the_best(tmp_path):
    scores = iter([5.0, 3.0, 4.0])
    calls = []

    def fake_fid(G, config):
        calls.append((config.fid_stats, config.fid_samples))
        assert not G.training
        return next(scores)

    config = tiny("demo", tmp_path, kimg=0.012, fid_every=0.004, fid_samples=10, fid_stats="stats.npz")
    with pytest.raises(ValueError, match="--fid_every=0.004 needs an FID evaluator"):
        run_training(config)
    run_dir = run_training(config, evaluate_fid=fake_fid)
    assert calls == [("stats.npz", 10)] * 3
    best = checkpoint.load(run_dir / "best.pt")
    assert best["best_fid"] == 3.0 and best["step"] == 2
    assert checkpoint.load(run_dir)["best_fid"] == 3.0
    assert '"fid": 4.0' in (run_dir / "log.jsonl").read_text()


def test_fid_evaluation_can_log_more_metrics(tmp_path):
    """An evaluator returning a dict (FID with --fid_prdc's precision, recall, ...) has every number logged."""
    scores = iter([{"fid": 5.0, "precision": 0.5, "recall": 0.25}, {"fid": 4.0, "precision": 0.75, "recall": 0.5}])
    config = tiny("demo", tmp_path, kimg=0.008, fid_every=0.004, fid_samples=10, fid_stats="stats.npz")
    run_dir = run_training(config, evaluate_fid=lambda G, config: next(scores))
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    logged = [entry for entry in log if "precision" in entry]
    assert [(e["fid"], e["precision"], e["recall"]) for e in logged] == [(5.0, 0.5, 0.25), (4.0, 0.75, 0.5)]
    assert checkpoint.load(run_dir / "best.pt")["best_fid"] == 4.0
