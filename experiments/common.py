"""What the studies share: paths, the confidence interval, the one-line parser, `--config` files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

__all__ = ["CACHE", "RESULTS", "ROOT", "OneLineParser", "ci", "read_config"]

ROOT = Path(__file__).resolve().parents[1]
#: Where studies write by default (ignored by git).
RESULTS = ROOT / "experiments" / "results"
#: Embedding caches of the studies.
CACHE = RESULTS / "cache"


def ci(a) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of a 95% t-interval over the first axis (half-width 0 for one row)."""
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    mean = a.mean(axis=0)
    if n < 2:
        return mean, np.zeros_like(mean)
    from scipy import stats

    half = stats.t.ppf(0.975, n - 1) * a.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, half


class OneLineParser(argparse.ArgumentParser):
    """Bad flags: one line on stderr and exit status 2 (no usage block)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def read_config(path, config_cls) -> dict:
    """The fields of a `--config` JSON file (an object of `config_cls` fields), or {}."""
    if not path:
        return {}
    fields = {f.name for f in dataclasses.fields(config_cls)}
    try:
        with open(path) as f:
            loaded = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"--config: cannot read {path}: {e}") from e
    if not isinstance(loaded, dict) or set(loaded) - fields:
        unknown = sorted(set(loaded) - fields) if isinstance(loaded, dict) else loaded
        raise ValueError(f"--config: unknown fields {unknown}; known: {sorted(fields)}")
    return loaded
