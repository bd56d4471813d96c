"""One command-line style: every command answers --help, and a misspelled flag is refused with a suggestion."""

from dataclasses import fields

import pytest

from ddgan.cli import COMMANDS
from ddgan.config import GROUPS, Config
from tests.helpers import run_cli as run


@pytest.mark.parametrize(("argv", "wrong", "right"), [
    (["train", "--kmg=3"], "kmg", "kimg"),
    (["demo", "--batch_sizee=4"], "batch_sizee", "batch_size"),
    (["sample", "CKPT", "--outt=x.png"], "outt", "out"),
    (["fid", "CKPT", "--stat=cifar10"], "stat", "stats"),
    (["fid", "make-stats", "demo", "--outt=s.npz"], "outt", "out"),
    (["bench", "--wat=train"], "wat", "what"),
    (["info", "CKPT", "--ckp=x"], "ckp", "ckpt"),
])
def test_every_command_refuses_a_misspelled_flag_before_doing_anything(argv, wrong, right, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert f"error: unknown flag --{wrong}; did you mean --{right}?" in err
    assert err.startswith(f"ddgan {argv[0]}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    code, out, _ = run([name, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: ddgan {name}")
    assert len(out.splitlines()) >= 3, "a usage line and a description"


def test_fid_make_stats_has_its_own_help(capsys):
    _, out, _ = run(["fid", "make-stats", "--help"], capsys)
    assert out.startswith("usage: ddgan fid make-stats DATA OUT")


def test_train_help_lists_every_flag_with_its_help_in_groups(capsys):
    _, out, _ = run(["train", "--help"], capsys)
    positions = [out.index(f"\n  {group}:\n") for group in GROUPS]
    assert positions == sorted(positions), "groups appear in the dataclass's order"
    for f in fields(Config):
        if f.name == "preset":
            continue
        line = next(line for line in out.splitlines() if line.strip().startswith(f"--{f.name}="))
        assert f.metadata["help"] in line
    assert "--ch_mult='[1,2,2,2]'" in out, "list defaults are shown as they are typed"


def test_every_config_field_has_a_group_and_a_one_line_help():
    for f in fields(Config):
        assert f.metadata.get("group") in GROUPS, f.name
        assert f.metadata.get("help") and "\n" not in f.metadata["help"], f.name


def test_missing_argument_says_what_the_command_takes(capsys):
    code, _, err = run(["sample"], capsys)
    assert code == 2 and "missing a required argument: 'ckpt'" in err and "ddgan sample --help" in err


def test_scripts_share_the_mechanism(capsys):
    from eval import bench_ops, benchmark, fid, sample

    for script, argv, command, right in [(sample.main, ["CKPT", "--nn=3"], "sample", "n"),
                                         (fid.main, ["CKPT", "--nn=3"], "fid", "n"),
                                         (benchmark.main, ["--wat=ops"], "bench", "what"),
                                         (bench_ops.main, ["--repeat=3"], "bench", "repeats")]:
        with pytest.raises(SystemExit) as exited:
            script(argv)
        assert exited.value.code == 2
        wrong = argv[-1].split("=")[0]
        assert f"ddgan {command}: error: unknown flag {wrong}; did you mean --{right}?" in capsys.readouterr().err
