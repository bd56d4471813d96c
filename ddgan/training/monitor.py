"""What a training run reports: TensorBoard scalars and images, a log file, and a console progress bar."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm


class Monitor:
    """Rank 0's reporting; other ranks get a Monitor that does nothing."""

    def __init__(self, run_dir: Path | None, total_kimg: float, start_kimg: float = 0.0, enabled: bool = True,
                 postfix: Callable[[dict], str] | None = None):
        self.enabled = enabled and run_dir is not None
        self.postfix = postfix or gan_postfix  # what the progress bar shows of the latest scalars
        self.writer = None
        self.bar = None
        self.log_file = None
        self.started = time.perf_counter()
        self.last_time, self.last_kimg = self.started, start_kimg
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.log_file = open(run_dir / "log.jsonl", "a", buffering=1)  # noqa: SIM115 (closed in close())
        self.total_kimg = round(total_kimg, 3)
        self.bar = tqdm(total=self.total_kimg, initial=min(round(start_kimg, 3), self.total_kimg), unit="kimg",
                        dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]")

    def scalars(self, kimg: float, step: int, values: dict) -> dict:
        """Log scalars (tensors are read here, the one host sync of a logging interval)."""
        now = time.perf_counter()
        rates = {}
        if kimg > self.last_kimg:
            seconds = now - self.last_time
            rates = {"speed/img_per_s": (kimg - self.last_kimg) * 1000 / seconds,
                     "speed/sec_per_kimg": seconds / (kimg - self.last_kimg)}
        self.last_time, self.last_kimg = now, kimg
        values = {k: float(v.item() if torch.is_tensor(v) else v) for k, v in {**values, **rates}.items()}
        if torch.cuda.is_available():
            values["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if not self.enabled:
            return values
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=int(kimg * 1000))
        self.log_file.write(json.dumps({"kimg": round(kimg, 3), "step": step, **values}) + "\n")
        self.bar.set_postfix_str(self.postfix(values), refresh=False)
        return values

    def progress(self, kimg: float) -> None:
        """Move the bar to `kimg`; the last batch may pass the total, the bar stops at it (no negative ETA)."""
        if self.enabled:
            self.bar.update(min(round(kimg, 3), self.total_kimg) - self.bar.n)

    def image(self, tag: str, kimg: float, grid_uint8_hwc) -> None:
        if self.enabled:
            self.writer.add_image(tag, grid_uint8_hwc, global_step=int(kimg * 1000), dataformats="HWC")

    def message(self, text: str) -> None:
        """A line for the person at the console, kept clear of the progress bar."""
        if self.enabled:
            self.bar.write(text)
            self.log_file.write(json.dumps({"message": text}) + "\n")

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.writer.close()
        self.log_file.close()
        self.enabled = False


def gan_postfix(values: dict) -> str:
    """The progress bar's summary of a DDGAN run: both losses and the speed."""
    return (f"D {values.get('loss/D', float('nan')):.3f} G {values.get('loss/G', float('nan')):.3f} "
            f"{values.get('speed/img_per_s', 0):.0f} img/s")
