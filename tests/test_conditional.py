"""Class-conditional models: training on labels, sampling by class, editing and interpolation."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddgan import sampling
from ddgan.cli import main
from ddgan.data import read_image_array, write_image_array
from ddgan.models import load_generator
from ddgan.training.loop import run_training
from tests.conftest import perturbed
from tests.helpers import assert_resumes_exactly, tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny conditional run on the demo shapes, and its EMA generator with perturbed weights."""
    run_dir = run_training(tiny("demo", tmp_path_factory.mktemp("runs"), cond=True, kimg=0.008, sample_kimg=0.004))
    G, config = load_generator(run_dir)
    return run_dir, perturbed(G), config


def images(G, config, seeds, labels, batch=64):
    return np.concatenate(list(sampling.generate(G, config, seeds, batch=batch, labels=labels, progress=False)))


def test_the_run_learns_its_classes_from_the_data(run):
    run_dir, _, config = run
    assert config.cond and config.num_classes == 4
    assert config.class_names == ("circle", "square", "triangle", "cross")
    assert (run_dir / "samples-000000000004.png").exists()
    grid = np.asarray(Image.open(run_dir / "samples-final.png"))
    # grid_images=4: one row per class, one column; 8 px images enlarged 8 times.
    assert grid.shape[:2] == (4 * 8 * 8, 8 * 8)


def test_an_image_is_a_function_of_its_seed_and_class(run):
    _, G, config = run
    seeds, labels = [5, 1, 9, 5], [0, 2, 2, 3]
    together = images(G, config, seeds, labels, batch=4)
    for batch in (1, 3):
        assert np.array_equal(together, images(G, config, seeds, labels, batch=batch))
    alone = images(G, config, [9], [2])
    assert np.array_equal(together[2], alone[0])
    assert not np.array_equal(together[0], together[3]), "the same seed in another class is another image"


def test_labels_are_checked(run):
    _, G, config = run
    with pytest.raises(ValueError, match="class-conditional .*--class"):
        images(G, config, [0], None)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3"):
        images(G, config, [0], [4])
    with pytest.raises(ValueError, match="not one of this model's 4 classes: 0=circle, 1=square"):
        sampling.parse_classes("hexagon", config)
    assert sampling.parse_classes("all", config) == [0, 1, 2, 3]
    assert sampling.parse_classes("cross,0", config) == [3, 0]
    assert sampling.parse_classes((1, 2), config) == [1, 2]


def test_editing_from_step_T_is_sampling_and_from_step_1_starts_from_the_input(run):
    _, G, config = run
    seeds, labels = [3, 4], [1, 2]
    inputs = torch.rand(2, config.num_channels, config.image_size, config.image_size) * 2 - 1
    from_noise = np.concatenate(list(sampling.edit(G, config, inputs, seeds, config.num_timesteps, labels=labels)))
    assert np.array_equal(from_noise, images(G, config, seeds, labels))
    # From step T the input is replaced by noise; from step 1 it is what G denoises (a perturbed random G
    # need not return it, but what it returns depends on it).
    other = -inputs
    assert np.array_equal(from_noise, np.concatenate(list(sampling.edit(G, config, other, seeds,
                                                                        config.num_timesteps, labels=labels))))
    kept = np.concatenate(list(sampling.edit(G, config, inputs, seeds, 1, labels=labels)))
    assert not np.array_equal(kept, np.concatenate(list(sampling.edit(G, config, other, seeds, 1, labels=labels))))
    with pytest.raises(ValueError, match=r"--start_step must be an integer in 1\.\.2"):
        list(sampling.edit(G, config, inputs, seeds, 0, labels=labels))


def test_interpolation_ends_at_the_two_seeds_images(run):
    _, G, config = run
    row = sampling.interpolate(G, config, 7, 11, frames=5, label=3)
    assert row.shape[0] == 5
    ends = images(G, config, [7, 11], [3, 3])
    assert np.array_equal(row[0], ends[0]) and np.array_equal(row[-1], ends[1])
    assert not np.array_equal(row[2], row[0]) and not np.array_equal(row[2], row[-1])


def test_slerp_stays_on_the_sphere():
    a, b = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    b = b / b.norm() * a.norm()
    middle = sampling.seeds.slerp(a, b, 0.5)
    assert torch.isclose(middle.norm(), a.norm()) and not torch.isclose((a + b).norm() / 2, a.norm())


def test_sample_command_by_class(run, tmp_path, capsys):
    run_dir, _, config = run
    out = tmp_path / "all.npz"
    main(["sample", str(run_dir), f"--out={out}", "--seeds=0-2", "--class=all", "--device=cpu"])
    x = read_image_array(out)
    with np.load(out) as archive:
        assert archive["y"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        assert archive["classes"].tolist() == list(config.class_names)
    assert x.shape[0] == 12
    folder = tmp_path / "pngs"
    main(["sample", str(run_dir), f"--out={folder}", "--seeds=4-4", "--class=square,2", "--device=cpu"])
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png")) == [
        "square/000004.png", "triangle/000004.png"]
    row = tmp_path / "row.png"
    main(["sample", str(run_dir), f"--out={row}", "--interpolate=1,2", "--frames=3", "--class=circle",
          "--device=cpu"])
    assert np.asarray(Image.open(row)).shape[:2] == (8 * 8, 3 * 8 * 8)


@pytest.mark.parametrize(("argv", "message"), [
    (["--class=7"], "--class=7 is not one of this model's 4 classes: 0=circle, 1=square, 2=triangle, 3=cross"),
    (["--interpolate=1,2", "--class=all"], "one class at a time"),
])
def test_sample_command_errors(run, tmp_path, capsys, argv, message):
    run_dir, _, _ = run
    with pytest.raises(SystemExit):
        main(["sample", str(run_dir), f"--out={tmp_path}/x.png", "--device=cpu", *argv])
    assert message in capsys.readouterr().err


def test_sample_command_draws_every_class_by_default(run, tmp_path):
    run_dir, _, _ = run
    main(["sample", str(run_dir), f"--out={tmp_path}/all.npz", "--seeds=0-1", "--device=cpu"])
    with np.load(tmp_path / "all.npz") as archive:
        assert archive["y"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_class_on_an_unconditional_checkpoint(tmp_path, capsys):
    from tests.helpers import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "run")
    with pytest.raises(SystemExit):
        main(["sample", str(ckpt), "--class=1", f"--out={tmp_path}/x.png"])
    assert "this checkpoint is unconditional" in capsys.readouterr().err


def test_edit_command(run, tmp_path, capsys):
    run_dir, _, config = run
    inputs = tmp_path / "in.npz"
    pixels = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    write_image_array(inputs, pixels)
    out = tmp_path / "edits.png"
    main(["edit", str(run_dir), f"--input={inputs}", "--start_step=1", "--class=cross", f"--out={out}"])
    assert np.asarray(Image.open(out)).shape[:2] == (2 * 8 * 8, 3 * 8 * 8), "inputs above their edits"
    single = tmp_path / "one.png"
    Image.fromarray(pixels[0]).save(single)
    main(["edit", str(run_dir), f"--input={single}", "--start_step=2", "--class=0", f"--out={tmp_path}/e.npz"])
    assert read_image_array(tmp_path / "e.npz").shape == (1, 8, 8, 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cases = [([f"--input={broken}", "--start_step=1"], f"--input={broken}: cannot read it as an image"),
             ([f"--input={inputs}", "--start_step=3", "--class=0"], "--start_step must be an integer in 1..2"),
             ([f"--input={inputs}", "--start_step=1"], "class-conditional")]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            main(["edit", str(run_dir), *argv, f"--out={tmp_path}/x.npz", "--overwrite=True"])
        assert message in capsys.readouterr().err


def test_exact_resume_of_a_conditional_run(tmp_path):
    config = tiny("demo", tmp_path / "a", cond=True, kimg=0.024, snapshot_kimg=0.008, lazy_reg=2)
    assert_resumes_exactly(config, stop_after=3, total_steps=6)


def test_exact_resume_with_the_class_loss(tmp_path):
    config = tiny("demo", tmp_path / "a", cond=True, class_loss=1.0, kimg=0.024, snapshot_kimg=0.008, lazy_reg=2)
    assert_resumes_exactly(config, stop_after=3, total_steps=6)


def test_class_loss_trains_a_class_head_on_d_that_g_answers_to(tmp_path):
    """--class_loss adds D's class head (built last: the other layers draw the same numbers) and both losses."""
    from ddgan.config import make_config
    from ddgan.training.trainer import Trainer
    from tests.helpers import TINY

    conditional = {**TINY, "cond": True, "num_classes": 4}
    with_head = make_config("demo", **conditional, class_loss=1.0)
    plain = Trainer(make_config("demo", **conditional, class_loss=0.0)).D.state_dict()
    trainer = Trainer(with_head)
    head = trainer.D.class_head.weight.detach().clone()
    assert {k: v for k, v in trainer.D.state_dict().items() if not k.startswith("class_head")}.keys() == plain.keys()
    assert all(torch.equal(trainer.D.state_dict()[k], v) for k, v in plain.items())
    x0 = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    stats = trainer.run_iteration(x0, torch.arange(8) % 4)
    assert 0 < float(stats["loss/D_class"]) and 0 < float(stats["loss/G_class"])
    assert not torch.equal(trainer.D.class_head.weight, head)
    assert Trainer(make_config("demo", **TINY, class_loss=1.0)).D.class_head is None  # unconditional: no head
    with pytest.raises(ValueError, match="--class_loss must be >= 0"):
        make_config("demo", **conditional, class_loss=-1.0)


def test_cond_on_unlabeled_data_is_refused(tmp_path):
    data = tmp_path / "x.npz"
    write_image_array(data, np.zeros((4, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="--cond=True needs class labels"):
        run_training(tiny("demo", tmp_path, data=str(data), cond=True))


def test_accuracy_of_the_demo_classes(run):
    from eval.modes import accuracy

    run_dir, _, _ = run
    report = accuracy(str(run_dir), n=8)
    assert set(report["accuracy"]) == {"circle", "square", "triangle", "cross"}
    assert all(0 <= v <= 1 for v in report["accuracy"].values())
    assert report["classifier_held_out_accuracy"] > 0.9
    T = report["steps"]
    one_step = accuracy(str(run_dir), n=8, steps=1)
    assert one_step["steps"] == 1 and T > 1 and set(one_step["accuracy"]) == set(report["accuracy"])
    with pytest.raises(ValueError, match=f"sampling steps must lie in 1..{T}"):  # the steps reach the sampler
        accuracy(str(run_dir), n=8, steps=T + 1)


def as_format_1(state: dict) -> dict:
    """A conditional checkpoint as format 1 wrote it: no class embedding in the time embeddings (nor its
    Adam entries, the last parameter of G and of D)."""
    old = dict(state, version=1)
    for net in ("G", "G_ema", "D"):
        old[net] = {k: v for k, v in state[net].items() if k != "class_temb.weight"}
    for name in ("opt_G", "opt_D"):
        groups = [dict(group) for group in state[name]["param_groups"]]
        last = groups[-1]["params"][-1]
        groups[-1]["params"] = groups[-1]["params"][:-1]
        old[name] = {"state": {k: v for k, v in state[name]["state"].items() if k != last}, "param_groups": groups}
    return old


def test_format_1_conditional_checkpoints_compute_what_they_did_and_resume(run, tmp_path):
    from ddgan.models import build_discriminator, checkpoint
    from ddgan.training.start import config_from_flags

    run_dir, _, config = run
    state = checkpoint.load(run_dir)
    old_file = tmp_path / "old" / "ckpt-old.pt"
    old_file.parent.mkdir()
    checkpoint.save_atomic(as_format_1(state), old_file)
    assert checkpoint.load(old_file)["G"]["class_temb.weight"].abs().max() == 0
    # Without the class in its time embeddings each network computes what format 1's did.
    G_old, _ = load_generator(old_file, ema=False)
    G_now, _ = load_generator(run_dir, ema=False)
    D_old, D_now = build_discriminator(config), build_discriminator(config)
    D_old.load_state_dict(checkpoint.load(old_file)["D"])
    D_now.load_state_dict(state["D"])
    for net in (G_now, D_now):
        with torch.no_grad():
            net.class_temb.weight.zero_()
    x, t, z, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.randn(4, config.nz), torch.arange(4)
    with torch.no_grad():
        assert torch.equal(G_old(x, t, z, y), G_now(x, t, z, y))
        assert torch.equal(D_old(x, t, x.flip(3), y), D_now(x, t, x.flip(3), y))
    # A resumed run trains the new embeddings from zero.
    resumed = run_training(config_from_flags(resume=str(old_file), kimg=2 * config.kimg))
    after = checkpoint.load(resumed)
    assert after["step"] > state["step"]
    assert after["G"]["class_temb.weight"].abs().max() > 0 and after["D"]["class_temb.weight"].abs().max() > 0
