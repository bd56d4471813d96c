"""Runs on a cluster: --run_dir restarts (torchrun's --max-restarts, a requeue), SIGUSR1, --checkpoint_minutes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddgan.models import checkpoint
from ddgan.training.loop import EXIT_REQUEUE, run_training
from ddgan.training.start import config_from_flags
from tests.helpers import TINY_FLAGS, free_port, tiny, wait_for

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
STATE = ("G", "D", "G_ema", "opt_G", "opt_D")


def train_command(run_dir: Path, *flags: str, nproc: int = 1) -> list[str]:
    """`python train.py` (or torchrun with one restart over `nproc` workers) on the tiny demo, in run_dir."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--max-restarts=1",
                     "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--monitor_interval=0.1"]
    return [*launcher, str(REPO / "train.py"), *TINY_FLAGS, f"--outdir={run_dir.parent / 'outdir'}",
            f"--run_dir={run_dir}", *flags]


def start(command: list[str]) -> subprocess.Popen:
    # Its own process group, as a scheduler's job step: nothing outlives the test.
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{proc.args} did not finish:\n{proc.communicate()[0]}")
    return out


def logged_steps(run_dir: Path) -> int:
    log = run_dir / "log.jsonl"
    return log.read_text().count('"loss/D"') if log.exists() else 0


def assert_same_checkpoints(a: Path, b: Path) -> None:
    """Two checkpoints hold the very same G, D, EMA and optimizer tensors."""
    first, second = checkpoint.read(a), checkpoint.read(b)
    assert first["step"] == second["step"] and first["images_seen"] == second["images_seen"]
    for part in STATE:
        flat_a, flat_b = flatten(first[part]), flatten(second[part])
        assert flat_a.keys() == flat_b.keys(), part
        for key, value in flat_a.items():
            same = torch.equal(value, flat_b[key]) if torch.is_tensor(value) else value == flat_b[key]
            assert same, f"{part} {key} differs"


def flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in flatten(value, f"{prefix}/{i}").items()}
    return {prefix: tree}


def worker_pid(agent: int, rank: int) -> int:
    """The pid of torchrun's worker of `rank` (a child of the agent with RANK=rank in its environment)."""
    children = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


def test_torchrun_restart_after_a_killed_worker_ends_as_an_uninterrupted_run(tmp_path):
    """A worker killed with SIGKILL after the first checkpoint: torchrun restarts the group, which continues
    from --run_dir's newest checkpoint, and the job ends in the very state of an uninterrupted run."""
    flags = ["--kimg=0.16", "--snapshot_kimg=0.04", "--keep_checkpoints=10"]  # 40 steps, a checkpoint every 10
    whole = start(train_command(tmp_path / "whole", *flags, nproc=2))
    faulted = tmp_path / "faulted"
    proc = start(train_command(faulted, *flags, nproc=2))
    wait_for(lambda: checkpoint.latest_checkpoint(faulted) if faulted.is_dir() else None, proc, timeout=180)
    os.kill(worker_pid(proc.pid, rank=1), signal.SIGKILL)
    out = finish(proc)
    assert proc.returncode == 0, out
    log = (faulted / "log.jsonl").read_text()
    assert "--run_dir holds a checkpoint: continuing from" in log, out
    assert finish(whole) and whole.returncode == 0
    final = checkpoint.checkpoint_name(160)
    assert_same_checkpoints(tmp_path / "whole" / final, faulted / final)


def test_the_same_command_after_sigterm_continues_its_run(tmp_path):
    """Started again after a SIGTERM, the same command continues in its folder and ends as one run would."""
    run_dir, whole_dir = tmp_path / "run", tmp_path / "whole"
    whole = start(train_command(whole_dir, "--kimg=0.2"))
    proc = start(train_command(run_dir, "--kimg=0.2"))
    wait_for(lambda: logged_steps(run_dir) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    assert proc.returncode == 0, out  # a stop someone asked for
    stopped_at = checkpoint.read(checkpoint.latest_checkpoint(run_dir))["step"]
    assert 3 <= stopped_at < 50, f"the first run was to stop early, not at step {stopped_at}"
    again = start(train_command(run_dir, "--kimg=0.2"))
    out = finish(again)
    assert again.returncode == 0, out
    assert f"continuing from {run_dir}" in out
    assert finish(whole) and whole.returncode == 0
    assert not (tmp_path / "outdir").exists(), "--run_dir is the run folder: nothing goes to --outdir"
    assert_same_checkpoints(checkpoint.latest_checkpoint(whole_dir), checkpoint.latest_checkpoint(run_dir))
    assert checkpoint.read(checkpoint.latest_checkpoint(run_dir))["step"] == 50


def test_sigusr1_saves_and_exits_with_the_requeue_status(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(train_command(run_dir, "--kimg=100"))
    wait_for(lambda: logged_steps(run_dir) >= 2, proc)
    proc.send_signal(signal.SIGUSR1)
    out = finish(proc)
    assert proc.returncode == EXIT_REQUEUE == 75, out
    state = checkpoint.load(run_dir)
    assert 2 <= state["step"] and state["images_seen"] < 100_000
    assert "SIGUSR1" in out and f"exiting with status {EXIT_REQUEUE}" in out


def test_checkpoint_minutes_saves_by_the_clock(tmp_path, monkeypatch):
    """Minutes since the last save decide: with a clock that advances 0.4 min per reading and
    --checkpoint_minutes=1, every third agreement point saves; the kimg schedule (off here) plays no part."""
    from ddgan.training import loop as training_loop

    readings = iter(range(10_000))
    monkeypatch.setattr(training_loop, "wall_minutes", lambda: 0.4 * next(readings))
    run_dir = run_training(tiny("demo", tmp_path, kimg=0.040, checkpoint_minutes=1.0, keep_checkpoints=20,
                                run_dir=str(tmp_path / "run")))
    monkeypatch.undo()
    saved = sorted(p.name for p in run_dir.glob("ckpt-*.pt"))
    # Readings: the start, then one per step; a save reads the clock once more.
    assert saved == [checkpoint.checkpoint_name(n) for n in (12, 24, 36, 40)], saved
    assert "since the last checkpoint (--checkpoint_minutes=1)" in (run_dir / "log.jsonl").read_text()


def test_run_dir_at_a_file_is_refused(tmp_path, capsys):
    from ddgan.cli import main

    file = tmp_path / "notes.txt"
    file.write_text("not a run")
    with pytest.raises(ValueError, match=r"--run_dir=.*notes.txt is a file, not a folder: .*pass a folder path"):
        config_from_flags("demo", run_dir=str(file))
    with pytest.raises(SystemExit) as exit_status:
        main(["train", "--preset=demo", f"--run_dir={file}"])
    assert exit_status.value.code == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert file.read_text() == "not a run"


def test_run_dir_refuses_flags_that_change_the_networks(tmp_path):
    run_dir = run_training(tiny("demo", tmp_path, run_dir=str(tmp_path / "run")))
    flags = dict(tiny("demo", tmp_path).to_dict(), run_dir=str(run_dir))
    flags.pop("preset")
    assert config_from_flags("demo", **flags).resume == str(checkpoint.latest_checkpoint(run_dir))
    with pytest.raises(ValueError, match=r"--run_dir=.*: these flags change the architecture.*ngf: 4 -> 8"):
        config_from_flags("demo", **{**flags, "ngf": 8})
    with pytest.raises(ValueError, match="holds a run of --preset=demo, not --preset=cifar10"):
        config_from_flags("cifar10", **flags)
