"""`make gpu-check`'s report: gpu-check.md (tables a person reads) and gpu-check.jsonl (one record a line)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

Record = dict  # one phase's or measurement's row, as gpu_check makes them


def write_report(records: Sequence[Record], out: Path) -> tuple[Path, Path]:
    """Write gpu-check.md and gpu-check.jsonl into `out` (replacing earlier ones); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    markdown, lines = out / "gpu-check.md", out / "gpu-check.jsonl"
    markdown.write_text(markdown_report(records))
    lines.write_text("".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records))
    return markdown, lines


def json_safe(value):
    """value with non-finite floats spelled as strings ("nan", "inf"), which strict JSON cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def markdown_report(records: Sequence[Record]) -> str:
    """The report: verdict, the phases with their times, every check, and the benchmark rows as a table."""
    failed = [r for r in records if not r["ok"]]
    device = next((r["detail"] for r in records if r["phase"] == "environment"), "unknown device")
    date = next((r.get("date") for r in records if r["phase"] == "environment"), None)
    lines = [f"# GPU check: {'FAIL' if failed else 'PASS'}", "",
             f"{device}" + (f"; {date}" if date else "") + f". {len(records) - len(failed)} of {len(records)} checks "
             "passed.", ""]
    phases = [r for r in records if r["name"] == "phase" or r["phase"] == "total"]
    lines += _table(["phase", "completed", "seconds", "limit s", "detail"],
                    [[r["phase"], _mark(r["ok"]), f"{r['seconds']:.1f}", _cell(r.get("limit_s")), r["detail"]]
                     for r in phases])
    checks = [r for r in records if r not in phases and r["phase"] != "environment"]
    lines += ["", "## Checks", ""]
    lines += _table(["phase", "check", "ok", "seconds", "detail"],
                    [[r["phase"], r["name"], _mark(r["ok"]), f"{r['seconds']:.2f}", r["detail"]] for r in checks])
    rows = [r for r in checks if r["phase"] == "bench" and r["ok"]]
    if rows:
        lines += ["", "## Benchmarks", ""]
        lines += _table(["row", "ms median", "images/s", "it/s", "peak MiB", "speed-up", "over"],
                        [[r["name"], _cell(r.get("ms_median")), _cell(r.get("images_per_s")),
                          _cell(r.get("iters_per_s")), _cell(r.get("peak_mem_mb")),
                          f"{r['speedup']:.2f}x" if r.get("speedup") else "", r.get("compared_with") or ""]
                         for r in rows])
        lines += ["", "## Roofline", "",
                  "FLOPs as torch's FlopCounterMode counts them (forward for sampling, forward + backward for "
                  "training); the ceiling is the higher of a matmul and the network's largest 3x3 conv, both "
                  "measured on this GPU in the row's dtype (eval/roofline.py).", ""]
        lines += _table(["row", "dtype", "GFLOP/image", "images/s", "TFLOP/s", "ceiling TFLOP/s (matmul, conv)",
                         "% of ceiling"], [roofline_cells(r) for r in rows])
    return "\n".join(lines) + "\n"


def roofline_cells(r: Record) -> list[str]:
    """A benchmark record's row of the roofline table; blank cells where it has no roofline."""
    flops, conv = r.get("flops_per_image"), r.get("ceiling_conv_tflops")
    ceilings = (f"{_cell(r.get('ceiling_tflops'))} ({_cell(r.get('ceiling_matmul_tflops'))}, {_cell(conv)})"
                if r.get("ceiling_tflops") is not None else "")
    percent = r.get("percent_of_ceiling")
    return [r["name"], _cell(r.get("dtype")), _cell(flops / 1e9 if flops is not None else None),
            _cell(r.get("images_per_s")), _cell(r.get("tflops")), ceilings,
            f"{percent:.1f}%" if percent is not None else ""]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; `|` inside cells is escaped."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def _mark(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def _cell(value) -> str:
    """A number for a table: 4 significant digits, thousands without decimals; blank when absent."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
