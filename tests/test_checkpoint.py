"""Atomic writes, finding the newest checkpoint, versions, and the errors for unusable files."""

import os

import pytest
import torch

from ddgan.models import checkpoint


def ours(**extra):
    return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": {}, **extra}


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = checkpoint.save_atomic(ours(x=torch.arange(3)), tmp_path / "a.pt")
    assert torch.equal(checkpoint.load(path)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = checkpoint.save_atomic(ours(x=1), tmp_path / "a.pt")

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="could not write checkpoint .*free disk space"):
        checkpoint.save_atomic(ours(x=2), path)
    monkeypatch.undo()
    assert checkpoint.load(path)["x"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_latest_and_prune(tmp_path):
    for i, images in enumerate((1000, 2000, 3000)):
        p = checkpoint.save_atomic(ours(i=i), tmp_path / checkpoint.checkpoint_name(images))
        os.utime(p, ns=(10**9 * (i + 1), 10**9 * (i + 1)))
    assert checkpoint.latest_checkpoint(tmp_path).name == checkpoint.checkpoint_name(3000)
    assert checkpoint.load(tmp_path)["i"] == 2  # a run folder means its newest checkpoint
    deleted = checkpoint.prune(tmp_path, keep=2)
    assert [p.name for p in deleted] == [checkpoint.checkpoint_name(1000)]


def test_an_outdir_means_the_newest_checkpoint_of_its_runs(tmp_path):
    for i, run in enumerate(("00000-demo-demo", "00001-demo-demo")):
        (tmp_path / run).mkdir()
        p = checkpoint.save_atomic(ours(i=i), tmp_path / run / checkpoint.checkpoint_name(1000))
        os.utime(p, ns=(10**9 * (i + 1), 10**9 * (i + 1)))
    assert checkpoint.load(tmp_path)["i"] == 1


def test_truncated_file_is_a_clear_error(tmp_path):
    good = checkpoint.save_atomic(ours(x=torch.zeros(1000)), tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:500])
    with pytest.raises(checkpoint.CheckpointError, match="truncated, corrupt .*earlier checkpoints .*: good.pt"):
        checkpoint.load(bad)


def test_foreign_and_newer_files(tmp_path):
    torch.save({"model": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a ddgan checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(checkpoint.CheckpointError, match="holds a list"):
        checkpoint.load(tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(checkpoint.CheckpointError, match="not a PyTorch file"):
        checkpoint.load(tmp_path / "text.pt")
    torch.save(ours() | {"version": checkpoint.VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(checkpoint.CheckpointError, match="newer ddgan"):
        checkpoint.load(tmp_path / "new.pt")
    torch.save({"module.all_modules.0.weight": torch.zeros(1)}, tmp_path / "netG_1200.pth")
    with pytest.raises(checkpoint.CheckpointError, match="original DDGAN"):
        checkpoint.load(tmp_path / "netG_1200.pth")


def test_older_format_is_migrated(tmp_path):
    old = {"format": checkpoint.FORMAT, "version": 0, "config": {}, "G": {"w": 1}, "ema": {"w": 2}, "kimg": 1.5}
    torch.save(old, tmp_path / "old.pt")
    state = checkpoint.load(tmp_path / "old.pt")
    assert state["version"] == checkpoint.VERSION and state["G_ema"] == {"w": 2} and state["images_seen"] == 1500


def test_missing_paths(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path)
