"""Model folders: `ddgan export` writes config.json + model.safetensors + a card; every command and
`ddgan.from_pretrained` read them (also by Hub id) without pickle, and sample the same bytes as the run."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ddgan
from ddgan.cli import COMMANDS, PURPOSES, main
from ddgan.config import make_config
from ddgan.models import build_generator, checkpoint, load_generator, model_folder
from tests.conftest import perturbed, put_in_hub_cache, save_generator_checkpoint

TINY = dict(image_size=8, num_channels_dae=8, nz=4, z_emb_dim=8, t_emb_dim=8, n_mlp=1, ngf=8)
KINDS = {
    "pixel": dict(ch_mult=[1, 2]),
    "conditional": dict(ch_mult=[1, 2], cond=True, num_classes=3, class_names=("ring", "dot", "bar"), class_loss=1.0),
    "wavelet": dict(ch_mult=[1], space="wavelet", net_type="wavelet", no_use_fbn=True, num_disc_layers=2),
}


def write_run(folder, kind: str, seed: int = 0):
    """A run folder holding one checkpoint of a tiny `kind` generator with perturbed weights, and a log with an FID."""
    config = make_config("demo", **TINY, **KINDS[kind])
    save_generator_checkpoint(folder, config, perturbed(build_generator(config), seed), images_seen=2048, step=64)
    (folder / "log.jsonl").write_text(json.dumps({"kimg": 1.0, "fid": 31.5}) + "\n"
                                      + json.dumps({"kimg": 2.0, "fid": 27.25, "precision": 0.5}) + "\n")
    return folder


@pytest.fixture(scope="module", params=sorted(KINDS))
def exported(request, tmp_path_factory):
    """(run folder, its model folder) for each kind of model."""
    root = tmp_path_factory.mktemp(request.param)
    run = write_run(root / "run", request.param)
    main(["export", str(run), f"--out={root / 'model'}"])
    return run, root / "model"


def test_a_model_folder_samples_the_same_bytes_as_its_run(exported, tmp_path):
    run, folder = exported
    main(["sample", str(folder), "--seeds=0-15", f"--out={tmp_path / 'a.npz'}"])
    main(["sample", str(run), "--seeds=0-15", f"--out={tmp_path / 'b.npz'}"])
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "samples.png"}


def test_the_folder_holds_the_ema_generator_and_what_sampling_needs(exported):
    run, folder = exported
    about = json.loads((folder / "config.json").read_text())
    assert (about["format"], about["format_version"]) == ("ddgan-model", 1)
    assert about["weights"] == {"dtype": "float32", "generator": "ema"}
    assert about["trained"]["kimg"] == 2.048 and about["trained"]["metrics"]["fid"] == 27.25
    assert not {"outdir", "resume", "workers"} & set(about["config"])
    state = checkpoint.load(run)
    weights = load_file(folder / "model.safetensors")
    assert weights.keys() == state["G_ema"].keys()
    assert all(torch.equal(weights[k], v) for k, v in state["G_ema"].items())


def test_reading_a_folder_needs_no_pickle(exported, monkeypatch):
    _, folder = exported

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    G, config = ddgan.from_pretrained(str(folder))
    assert not G.training and config.image_size == 8


def test_the_card_has_the_hubs_front_matter_and_the_commands(exported, monkeypatch):
    _, folder = exported
    card = (folder / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: ddgan" in front and "pipeline_tag: unconditional-image-generation" in front
    assert "license:" not in front
    # The usage names the folder by its own name, never by the exporting machine's path.
    assert f"ddgan sample {folder.name} --seeds=0-15" in body and "ddgan.from_pretrained(" in body
    assert str(folder.parent) not in card and f"OWNER/{folder.name}" in body
    assert "fid 27.250, precision 0.500" in body and "![samples](samples.png)" in body
    # The card's Python runs as written, and its folder can be shared (not owner-only, as mkdtemp makes it).
    code = body.split("```python\n")[1].split("```")[0]
    scope = {}
    monkeypatch.chdir(folder.parent)  # beside the folder, as the card says
    exec(code, scope)
    assert scope["images"].shape == (16, 8, 8, 3) and scope["images"].dtype == np.uint8
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in [folder, *folder.iterdir()])


def test_bfloat16_weights_halve_the_file_and_sample_nearly_alike(tmp_path):
    run = write_run(tmp_path / "run", "pixel")
    main(["export", str(run), f"--out={tmp_path / 'f32'}"])
    main(["export", str(run), f"--out={tmp_path / 'bf16'}", "--dtype=bfloat16", "--license=mit"])
    assert "license: mit" in (tmp_path / "bf16" / "README.md").read_text()
    small, full = ((tmp_path / f / "model.safetensors").stat().st_size for f in ("bf16", "f32"))
    assert small < 0.6 * full
    G, config = ddgan.from_pretrained(str(tmp_path / "bf16"))
    G_full, _ = ddgan.from_pretrained(str(tmp_path / "f32"))
    assert next(G.parameters()).dtype == torch.float32
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 2])
    z = torch.randn(2, config.nz)
    assert (G(x, t, z) - G_full(x, t, z)).abs().max() < 0.1


def test_info_describes_a_folder(exported, capsys):
    _, folder = exported
    main(["info", str(folder)])
    out = capsys.readouterr().out
    assert "ddgan model folder format 1" in out and "weights float32" in out and "2.05 kimg" in out


def test_a_hub_id_is_read_from_the_cache_and_offline_ids_end_in_one_line(exported, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    run, folder = exported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    put_in_hub_cache(tmp_path / "hub", "someone/tiny-ddgan", folder)
    G, config = ddgan.from_pretrained("someone/tiny-ddgan@main")
    expected, _ = load_generator(run)
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), expected.state_dict().values(), strict=True))
    with pytest.raises(SystemExit):
        main(["sample", "nobody/no-such-model", "--seeds=0-1", f"--out={tmp_path / 'x.npz'}"])
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "nobody/no-such-model" in error and "HF_HUB_OFFLINE (or" in error


# -- bad input -------------------------------------------------------------------------------------------------


def run_cli(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().err.strip()


def test_an_existing_out_is_refused_unless_overwrite(tmp_path, capsys):
    run = write_run(tmp_path / "run", "pixel")
    main(["export", str(run), f"--out={tmp_path / 'm'}"])
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert "pass --overwrite" in run_cli(["export", str(run), f"--out={tmp_path / 'm'}"], capsys)
    write_run(tmp_path / "run2", "pixel", seed=1)
    main(["export", str(tmp_path / "run2"), f"--out={tmp_path / 'm'}", "--overwrite"])
    assert (tmp_path / "m" / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "run", "run2"], "no staging folder is left"


def test_a_dtype_not_offered_and_a_checkpoint_that_cannot_be_exported(tmp_path, capsys):
    run = write_run(tmp_path / "run", "pixel")
    assert "--dtype=int8: offered are float32, bfloat16, float16" in run_cli(
        ["export", str(run), f"--out={tmp_path / 'm'}", "--dtype=int8"], capsys)
    state = checkpoint.load(run)
    key = next(iter(state["G_ema"]))
    state["G_ema"][key].fill_(float("nan"))
    checkpoint.save_atomic(state, run / "ckpt-000000002048.pt")
    assert f"cannot export: the generator's weights are not finite ({key}" in run_cli(
        ["export", str(run), f"--out={tmp_path / 'm'}"], capsys)
    assert not (tmp_path / "m").exists()


def test_broken_folders_are_named(tmp_path, capsys):
    run = write_run(tmp_path / "run", "pixel")
    main(["export", str(run), f"--out={tmp_path / 'm'}"])
    weights = load_file(tmp_path / "m" / "model.safetensors")
    first, second = list(weights)[:2]
    weights["stray.weight"] = torch.zeros(1)
    del weights[first]
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(model_folder.ModelFolderError, match=rf"missing {first}; unexpected stray.weight"):
        ddgan.from_pretrained(str(tmp_path / "m"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(model_folder.ModelFolderError, match="is not a model folder"):
        ddgan.from_pretrained(str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    assert "is not a ddgan model folder's" in run_cli(["sample", str(tmp_path / "other"), "--seeds=0"], capsys)
    (tmp_path / "m" / "model.safetensors").unlink()
    assert "has no model.safetensors" in run_cli(["sample", str(tmp_path / "m"), "--seeds=0"], capsys)


def test_every_command_has_a_one_line_purpose():
    import os
    import subprocess
    import sys

    assert set(PURPOSES) == set(COMMANDS)
    assert all("\n" not in line and len(line) <= 120 for line in PURPOSES.values())
    result = subprocess.run([sys.executable, "-m", "ddgan.cli", "--help"], capture_output=True, text=True,
                            env=dict(os.environ, PAGER="cat"), timeout=120)
    shown = result.stdout + result.stderr  # fire prints a component's help on stderr when not on a terminal
    assert all(line in shown for line in PURPOSES.values()), shown
    assert "(see --help)" not in shown
