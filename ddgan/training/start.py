"""How a run starts: its config from a preset and flags, from --resume's checkpoint, or from the newest
checkpoint in --run_dir (a restart of the same command), fitted to its data; and a new run's folder."""

from __future__ import annotations

import re
from pathlib import Path

from ddgan.config import Config, architecture_changes, check_known, make_config, replace, validate
from ddgan.data import ImageDataset
from ddgan.models import checkpoint
from ddgan.spaces import check_resumed_autoencoder


def new_run_dir(outdir: str | Path, config: Config) -> Path:
    """outdir/NNNNN-<preset>-<data>: the next free number, like StyleGAN's run folders."""
    outdir = Path(outdir).expanduser()
    outdir.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    data = re.sub(r"[^A-Za-z0-9_.]+", "_", Path(config.data).stem or config.data)[:40]
    run_dir = outdir / f"{max(numbers, default=-1) + 1:05d}-{config.preset}-{data}"
    run_dir.mkdir()
    return run_dir


def resume_config(resume: str, flags: dict, flag: str | None = None) -> tuple[Config, Path]:
    """The checkpoint's config with the given flags applied; architecture changes are refused.

    flag: how the refusal names what asked to continue (default `--resume FILE`)."""
    file = checkpoint.resolve(resume)
    saved = Config.from_dict(checkpoint.load(file)["config"], f"checkpoint {file}")
    # Runs from before --resamp_with_conv=False was refused: the flag never changed the networks.
    saved = replace(saved, resamp_with_conv=True)
    check_known(flags, "flag")
    values = saved.to_dict() | flags | {"resume": str(file)}
    config = Config.from_dict(values, "flag")
    validate(config)
    changed = architecture_changes(saved, config)
    if changed:
        instead = "pass another --run_dir" if flag else "start a new run without --resume"
        raise ValueError(f"{flag or f'--resume {file}'}: these flags change the architecture of the saved networks: "
                         f"{'; '.join(changed)}. Drop them, or {instead}")
    if "autoencoder" in flags or "autoencoder_config" in flags:
        check_resumed_autoencoder(file.parent, config)
    return config, file


def config_from_flags(preset: str = "cifar10", **flags) -> Config:
    """The run's config from a preset and flags, or from --resume's checkpoint and flags, or from the newest
    checkpoint in --run_dir and flags (a restart of the same command: the flags are those that started it)."""
    if flags.get("run_dir"):
        continued = continue_in_run_dir(preset, flags)
        if continued is not None:
            return continued
    if flags.get("resume"):
        config, _ = resume_config(flags.pop("resume"), flags)
        return config
    return make_config(preset, **flags)


def continue_in_run_dir(preset: str, flags: dict) -> Config | None:
    """The config that continues --run_dir's newest checkpoint with `flags`; None when the folder holds none
    (missing or empty: a new run starts there)."""
    run_dir = flags["run_dir"]
    folder = Path(run_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--run_dir={run_dir} is a file, not a folder: --run_dir names the run folder itself "
                         "(made if missing); pass a folder path, or --resume=FILE to continue from a checkpoint file")
    if flags.get("resume"):
        raise ValueError(f"--resume and --run_dir={run_dir} both say where the run is; pass --run_dir alone (it "
                         "continues from the newest checkpoint in that folder) or --resume alone")
    newest = checkpoint.latest_checkpoint(folder) if folder.is_dir() else None
    if newest is None:
        return None
    config, _ = resume_config(str(newest), flags, flag=f"--run_dir={run_dir} (newest checkpoint {newest.name})")
    if config.preset != preset:
        raise ValueError(f"--run_dir={run_dir} holds a run of --preset={config.preset}, not --preset={preset}: "
                         f"restart it with the command line that started it (--preset={config.preset}), or pass "
                         "another --run_dir for a new run")
    return config


def with_classes(config: Config, dataset: ImageDataset) -> Config:
    """Under --cond, the config with the data's classes; a resumed run's classes must be the data's."""
    if not config.cond:
        return config
    names = tuple(dataset.class_names)
    if config.num_classes and (config.num_classes, tuple(config.class_names)) != (dataset.num_classes, names):
        raise ValueError(f"--data={config.data} has {dataset.num_classes} classes ({', '.join(names)}), but the "
                         f"networks were made for {config.num_classes} ({', '.join(config.class_names)}); resume on "
                         "the same data, or start a new run")
    return replace(config, num_classes=dataset.num_classes, class_names=names)


def decide_flips(config: Config, dataset: ImageDataset) -> tuple[Config, str]:
    """The config with --hflip as it will apply to this data, and a line for the run log saying so."""
    if config.hflip and not dataset.flippable:
        return replace(config, hflip=False), (f"random horizontal flips: off ({dataset.name}'s images may not be "
                                              "mirrored: a mirrored digit is not a digit)")
    return config, f"random horizontal flips: {'on' if config.hflip else 'off (--hflip=False)'}"
