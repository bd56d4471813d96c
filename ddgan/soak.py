"""Soak test (not in CI): train a tiny model for a long while, kill -9 it every few minutes, resume each time.

`make soak` or `python -m ddgan.soak --minutes=30 --kill_every=180`. It ends when the run has seen the
asked number of images, then checks the final checkpoint and samples a grid from it.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from ddgan.models import checkpoint

TINY = ["--preset=demo", "--image_size=8", "--ch_mult=[1,2]", "--num_channels_dae=8", "--nz=4", "--z_emb_dim=8",
        "--t_emb_dim=8", "--n_mlp=1", "--ngf=4", "--batch_size=8", "--workers=0", "--log_every=20", "--cond=False",
        "--sample_kimg=0"]


def _train_command(outdir: Path, kimg: float, resume: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "ddgan.cli", "train", *TINY, f"--kimg={kimg}", "--snapshot_kimg=0.4",
           f"--outdir={outdir}"]
    return cmd + ([f"--resume={resume}"] if resume else [])


def _images_per_second(outdir: Path, seconds: float = 30.0) -> float:
    """Calibrate: how fast the tiny model trains here."""
    proc = subprocess.Popen(_train_command(outdir / "calibration", 1e6, None), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    state = checkpoint.load(next((outdir / "calibration").iterdir()))
    return state["images_seen"] / seconds


def soak(minutes: float = 30.0, kill_every: float = 180.0, outdir: str = "runs/soak", seed: int = 0) -> dict:
    """Train for about `minutes`, killing the run with SIGKILL every ~`kill_every` seconds; report the figures."""
    rng = random.Random(seed)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rate = _images_per_second(outdir)
    kimg = round(rate * minutes * 60 / 1000, 3)
    print(f"calibrated {rate:.1f} img/s; asking for {kimg} kimg (~{minutes} min of training)", flush=True)
    started, kills, run_dir = time.perf_counter(), 0, None
    before = {p for p in outdir.iterdir()}
    while True:
        proc = subprocess.Popen(_train_command(outdir, kimg, run_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.perf_counter() + rng.uniform(0.5, 1.5) * kill_every
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(1)
        if run_dir is None:
            new = [p for p in outdir.iterdir() if p not in before and p.is_dir()]
            run_dir = new[0] if new else None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            seen = checkpoint.load(run_dir)["images_seen"] if run_dir and checkpoint.list_checkpoints(run_dir) else 0
            print(f"kill -9 #{kills} at {seen / 1000:.2f}/{kimg} kimg", flush=True)
            if run_dir is not None and not checkpoint.list_checkpoints(run_dir):
                run_dir, before = None, set(outdir.iterdir())  # killed before the first checkpoint: start over
            continue
        if proc.returncode != 0:
            raise RuntimeError(f"training failed with exit code {proc.returncode}:\n{proc.stderr.read()[-2000:]}")
        break
    state = checkpoint.load(run_dir)
    asked = math.ceil(kimg * 1000 / 8) * 8
    grid = run_dir / "soak-final.png"
    subprocess.run([sys.executable, "-m", "ddgan.cli", "sample", str(run_dir), f"--out={grid}", "--n=16",
                    "--overwrite=True"], check=True, stdout=subprocess.DEVNULL)
    report = {"minutes": round((time.perf_counter() - started) / 60, 1), "kills": kills, "kimg_asked": kimg,
              "images_asked": asked, "images_seen": state["images_seen"], "steps": state["step"],
              "final_checkpoint": str(checkpoint.latest_checkpoint(run_dir)), "grid": str(grid),
              "ok": state["images_seen"] == asked and grid.exists()}
    print(json.dumps(report), flush=True)
    if not report["ok"]:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    from ddgan.command import run_command

    run_command("soak", soak)
