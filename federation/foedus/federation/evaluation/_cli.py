"""The command line shared by the evaluation modules: `python -m foedus.federation.evaluation.X [DATA_DIR]`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def run_main(
    evaluate: Callable[..., dict[str, float]],
    default_data_dir: Callable[[], Path],
    argv: Sequence[str] | None,
) -> int:
    """Runs `evaluate(data_dir, progress=...)` and prints its figures as JSON; exit 2 without data."""
    args = list(sys.argv[1:] if argv is None else argv)
    data_dir = Path(args[0]) if args else default_data_dir()
    try:
        figures = evaluate(data_dir, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except FileNotFoundError as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=2))
    return 0
