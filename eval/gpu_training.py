"""Whether `make gpu-check`'s short GPU training run behaves as the CPU runs of the demo preset do: its
logged losses start at chance, leave it, and come back (a working GAN's game)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

# An untrained D's logits are about 0, so its loss softplus(-l_real) + softplus(l_fake) starts at 2 ln 2
# and G's softplus(-l_fake) at ln 2; a working GAN wanders off these values and keeps coming back to them.
CHANCE_D_LOSS = 2 * math.log(2)
CHANCE_G_LOSS = math.log(2)
START_TOLERANCE = 0.05  # first logged D loss: 1.386 in every CPU run of the demo preset
MIN_EXCURSION = 0.05  # D off chance at least once: CPU runs reach 0.12-6.7 within 200 steps
BALANCE_TOLERANCE = 0.5  # last-quarter medians within this of chance: CPU runs stay within 0.08


def read_losses(log_path: Path) -> list[dict]:
    """The logged points of a run's log.jsonl that carry both losses (message lines are skipped)."""
    rows = []
    for line in Path(log_path).read_text().splitlines():
        entry = json.loads(line)
        if "loss/D" in entry and "loss/G" in entry:
            rows.append({"step": entry.get("step"), "loss/D": float(entry["loss/D"]), "loss/G": float(entry["loss/G"])})
    return rows


def training_healthy(rows: Sequence[dict]) -> tuple[bool, str]:
    """Whether a short run's logged losses behave as the demo preset's do on the CPU; and a line saying how.

    A GAN's losses do not fall: on the CPU, 200 demo steps start with D at 2 ln 2 = 1.386 (its logits are
    about 0), swing off it as D and G take turns, and end with the last quarter's medians at 1.36-1.40 for
    D and 0.68-0.78 for G, as often above the start as below. So the check asks for
    - at least four logged points, every loss finite;
    - D's first loss within START_TOLERANCE of 2 ln 2: the networks start as on the CPU;
    - D's loss off 2 ln 2 by MIN_EXCURSION at least once: D is learning (a frozen D stays at 2 ln 2);
    - both last-quarter medians within BALANCE_TOLERANCE of chance (2 ln 2, ln 2): neither network has
      won, as it would if D saw through G (D -> 0, G up) or a gradient were broken.
    """
    if len(rows) < 4:
        return False, f"only {len(rows)} logged points with loss/D and loss/G; need at least 4"
    d_losses = [row["loss/D"] for row in rows]
    bad = [(row["step"], name) for row in rows for name in ("loss/D", "loss/G") if not math.isfinite(row[name])]
    if bad:
        step, name = bad[0]
        return False, f"{len(bad)} non-finite losses, the first {name} at step {step}"
    problems = []
    if abs(d_losses[0] - CHANCE_D_LOSS) > START_TOLERANCE:
        problems.append(f"D starts at {d_losses[0]:.3f}, not within {START_TOLERANCE} of 2 ln 2 = {CHANCE_D_LOSS:.3f}")
    excursion = max(abs(d - CHANCE_D_LOSS) for d in d_losses[1:])
    if excursion < MIN_EXCURSION:
        problems.append(f"D never moves off 2 ln 2 by {MIN_EXCURSION} (at most {excursion:.3f}): it does not learn")
    last = rows[len(rows) - max(1, len(rows) // 4):]
    d_median = statistics.median(row["loss/D"] for row in last)
    g_median = statistics.median(row["loss/G"] for row in last)
    for name, median, chance in (("D", d_median, CHANCE_D_LOSS), ("G", g_median, CHANCE_G_LOSS)):
        if abs(median - chance) > BALANCE_TOLERANCE:
            problems.append(f"{name}'s last-quarter median {median:.3f} is more than {BALANCE_TOLERANCE} from "
                            f"chance {chance:.3f}")
    summary = (f"{len(rows)} points, all finite; D starts at {d_losses[0]:.3f}, moves off chance by up to "
               f"{excursion:.3f}; last-quarter medians D {d_median:.3f}, G {g_median:.3f} "
               f"(chance {CHANCE_D_LOSS:.3f}, {CHANCE_G_LOSS:.3f})")
    return not problems, "; ".join(problems) if problems else summary
