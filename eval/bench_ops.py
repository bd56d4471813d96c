"""`python -m eval.bench_ops [--device=cuda] [--repeats=5]`: the custom ops' speed-ups, as `ddgan bench --what=ops`
(the measurements themselves are `eval.ops_timing`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval/bench_ops.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m eval.bench_ops [--device=cuda] [--repeats=5]` is `ddgan bench --what=ops ...`."""
    from ddgan.command import run_command

    run_command("bench", "eval.benchmark:bench_command", ["--what=ops", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
