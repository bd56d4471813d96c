"""Loading a checkpoint never runs code: a crafted pickle is refused at every entry point, and nothing in it runs."""

import argparse
from pathlib import Path

import pytest
import torch

from ddgan.cli import main
from ddgan.models import checkpoint, load_generator
from ddgan.training.start import config_from_flags
from tests.helpers import write_checkpoint


class CreatesFile:
    """Unpickling this object opens (so creates) `path`: the shape of a remote-code-execution payload."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture
def crafted(tmp_path):
    """(a run folder holding a checkpoint-looking file with a payload, the marker file the payload would create)"""
    marker = tmp_path / "payload-ran"
    run_dir = tmp_path / "00000-demo-demo"
    run_dir.mkdir()
    path = run_dir / "ckpt-000000000016.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": {}, "step": 0,
                "extra": CreatesFile(marker)}, path)
    yield path, marker
    assert not marker.exists(), "the payload ran"


def test_the_payload_is_real(crafted):
    """Unpickling the object would create the marker (else the tests below would prove nothing)."""
    path, marker = crafted
    function, arguments = CreatesFile(marker).__reduce__()  # what pickle calls when it loads the object
    function(*arguments).close()
    assert marker.exists()
    marker.unlink()
    assert b"builtins" in path.read_bytes() or b"io" in path.read_bytes(), "the file holds the call"


REFUSAL = "holds code or objects that ddgan will not execute"


@pytest.mark.parametrize("load", [checkpoint.load, checkpoint.read, load_generator,
                                  lambda path: config_from_flags(resume=str(path))],
                         ids=["checkpoint.load", "checkpoint.read", "load_generator", "resume"])
def test_python_entry_points_refuse(crafted, load):
    path, _ = crafted
    with pytest.raises(checkpoint.CheckpointError, match=REFUSAL) as error:
        load(path)
    assert str(path) in str(error.value) and "(it asks for io.open)" in str(error.value)


def test_a_run_folder_resolves_to_the_crafted_file_and_is_refused(crafted):
    path, _ = crafted
    with pytest.raises(checkpoint.CheckpointError, match=REFUSAL):
        load_generator(path.parent)


@pytest.mark.parametrize("argv", [["info", "{ckpt}"], ["sample", "{ckpt}", "--out={tmp}/s.png", "--device=cpu"],
                                  ["train", "--resume={ckpt}"], ["fid", "{ckpt}", "--ref={tmp}", "--device=cpu"]],
                         ids=["info", "sample", "train --resume", "fid"])
def test_commands_refuse_with_one_line(crafted, argv, tmp_path, capsys):
    path, _ = crafted
    with pytest.raises(SystemExit) as exited:
        main([word.format(ckpt=path, tmp=tmp_path) for word in argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"ddgan {argv[0]}: error: {path} {REFUSAL}" in err and "Traceback" not in err


def test_our_checkpoints_and_the_originals_still_load(tmp_path):
    ours = write_checkpoint(tmp_path)
    G, config = load_generator(ours)
    assert config.image_size == 8
    # The original's content.pth keeps its flags as an argparse.Namespace: allowed, it runs nothing.
    content = tmp_path / "content.pth"
    torch.save({"netG_dict": {"module.z_transform.1.weight": torch.zeros(1)}, "args": argparse.Namespace(a=1)},
               content)
    assert checkpoint.is_original(checkpoint.load(content, original_ok=True))
