"""Faults a long run meets: signals, kill -9 (also mid-write), a full disk, non-finite losses."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddgan.diffusion import losses
from ddgan.models import checkpoint
from ddgan.training.loop import run_training
from ddgan.training.start import config_from_flags
from ddgan.training.trainer import NonFiniteError
from tests.helpers import TINY_FLAGS, tiny, wait_for

REPO = Path(__file__).resolve().parents[1]


def start_training(tmp_path, *flags) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "ddgan.cli", "train", *TINY_FLAGS, f"--outdir={tmp_path}", *flags]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)



def run_dir_of(tmp_path) -> Path:
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return run_dir


def logged_steps(tmp_path) -> int:
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    log = runs[0] / "log.jsonl" if runs else None
    return log.read_text().count('"loss/D"') if log and log.exists() else 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, signum):
    proc = start_training(tmp_path, "--kimg=100")
    wait_for(lambda: logged_steps(tmp_path) >= 2, proc)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    state = checkpoint.load(run_dir_of(tmp_path))
    assert 2 <= state["step"] and state["images_seen"] < 100_000
    assert "stop requested" in out


def test_kill_9_keeps_the_last_good_checkpoint_and_resume_finishes(tmp_path):
    # A checkpoint every step, so the kill lands near (or in) a write.
    proc = start_training(tmp_path, "--kimg=100", "--snapshot_kimg=0.004", "--keep_checkpoints=2")
    wait_for(lambda: len(list(tmp_path.glob("*/ckpt-*.pt"))) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_dir = run_dir_of(tmp_path)
    for file in checkpoint.list_checkpoints(run_dir):
        checkpoint.load(file)  # every *.pt left behind is whole
    killed_at = checkpoint.load(run_dir)["step"]
    run_training(config_from_flags(resume=str(run_dir), kimg=(killed_at + 2) * 4 / 1000))
    state = checkpoint.load(run_dir)
    assert state["step"] == killed_at + 2 and state["images_seen"] == (killed_at + 2) * 4
    assert not list(run_dir.glob(".*.tmp"))


SLOW_SAVE = """
import sys, time
from pathlib import Path
import torch
from ddgan.models import checkpoint
target, marker = Path(sys.argv[1]), Path(sys.argv[2])

class Stall:
    def __reduce__(self):
        marker.write_text("writing")
        time.sleep(60)
        return (int, (0,))

checkpoint.save_atomic({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": {},
                        "payload": torch.ones(100_000), "stall": Stall()}, target)
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": {},
                            "payload": torch.zeros(3)}, target)
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(target), str(marker)], env=env)
    wait_for(marker.exists, proc, timeout=60)
    proc.kill()
    proc.wait(timeout=30)
    assert torch.equal(checkpoint.load(target)["payload"], torch.zeros(3))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt.pt"]
    assert len(checkpoint.remove_stale_temporaries(tmp_path)) == 1


def test_full_disk_during_training_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    with pytest.raises(OSError, match="could not write checkpoint .*No space left.*free disk space"):
        run_training(tiny("demo", tmp_path, kimg=0.016, snapshot_kimg=0.004))
    monkeypatch.undo()
    run_dir = run_dir_of(tmp_path)
    assert [p.name for p in run_dir.glob("*.pt")] == [checkpoint.checkpoint_name(4)]
    assert checkpoint.load(run_dir)["step"] == 1


def nan_on_call(monkeypatch, bad_calls):
    real, count = losses.g_loss, [0]

    def g_loss(logits):
        count[0] += 1
        value = real(logits)
        return value * float("nan") if count[0] in bad_calls else value

    monkeypatch.setattr(losses, "g_loss", g_loss)


def test_non_finite_loss_stops_with_step_quantity_and_hint(tmp_path, monkeypatch):
    nan_on_call(monkeypatch, {3})
    with pytest.raises(NonFiniteError, match=r"G loss became nan at step 2 .*lower --lr_g/--lr_d or raise --r1_gamma"):
        run_training(tiny("demo", tmp_path, kimg=0.040))
    state = checkpoint.load(run_dir_of(tmp_path))
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


def test_skip_nonfinite_tolerates_a_few(tmp_path, monkeypatch):
    nan_on_call(monkeypatch, {3, 5})
    run_dir = run_training(tiny("demo", tmp_path, kimg=0.020, skip_nonfinite=2))
    assert checkpoint.load(run_dir)["step"] == 5
    assert "skipping a step" in (run_dir / "log.jsonl").read_text()


def test_sigterm_under_torchrun_stops_every_rank(tmp_path):
    from tests.helpers import free_port

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "train.py"), *TINY_FLAGS, "--kimg=100", f"--outdir={tmp_path}"]
    # Its own process group, as a batch scheduler's job step: the signal reaches the agent and both ranks.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    wait_for(lambda: logged_steps(tmp_path) >= 2, proc, timeout=180)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    leftovers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes still running after SIGTERM: {leftovers}\n{out}"
    state = checkpoint.load(run_dir_of(tmp_path))
    assert state["step"] >= 2 and state["step"] % 10 == 0  # the ranks agreed on a step to stop at
    assert "stop requested" in out


def test_skipped_iterations_keep_the_data_position(tmp_path, monkeypatch):
    nan_on_call(monkeypatch, {3, 5})
    run_dir = run_training(tiny("demo", tmp_path, kimg=0.020, skip_nonfinite=2))
    state = checkpoint.load(run_dir)
    assert state["step"] == 5 and state["batches_drawn"] == 7, "two batches were drawn by skipped iterations"
    monkeypatch.undo()

    from ddgan.training import loop as training_loop

    starts = []
    real_make_loader = training_loop.make_loader

    def recording_make_loader(*args, start_index=0, **kwargs):
        starts.append(start_index)
        return real_make_loader(*args, start_index=start_index, **kwargs)

    monkeypatch.setattr(training_loop, "make_loader", recording_make_loader)
    run_training(config_from_flags(resume=str(run_dir), kimg=0.024))
    assert starts == [7 * 4], "the resumed run reads on after the 7 batches drawn, not after the 5 steps"


def test_progress_bar_stops_at_the_total(tmp_path):
    from ddgan.training.monitor import Monitor

    monitor = Monitor(tmp_path, total_kimg=2.0, start_kimg=0.0)
    monitor.progress(1.0)
    monitor.progress(2.05)  # the last batch passed --kimg
    assert monitor.bar.n == 2.0 and monitor.bar.format_dict["total"] == 2.0
    monitor.close()
    resumed = Monitor(tmp_path, total_kimg=2.0, start_kimg=2.05)
    assert resumed.bar.n == 2.0
    resumed.close()
