"""What the studies share: paths, the confidence interval, the one-line parser, `--config` files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["CACHE", "RESULTS", "ROOT", "OneLineParser", "check_fields", "ci", "output_dirs",
           "read_config", "write_text"]

ROOT = Path(__file__).resolve().parents[1]
#: Where studies write by default (ignored by git).
RESULTS = ROOT / "experiments" / "results"
#: Embedding caches of the studies when `--out` is not given (with `--out X`: X/cache,
#: with `--cache-dir D`: D), so a study writes nothing outside the paths it is given.
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


def output_dirs(out, cache_dir, default_out: Path) -> tuple[Path, Path]:
    """(results folder, embedding-cache folder) from `--out` and `--cache-dir` (None: not given).

    Without `--out` the study writes to `default_out` and caches to `CACHE` (both under
    experiments/results/, shared by the studies); with `--out X` the cache is X/cache.
    Both are created now, so an unwritable place fails (ValueError, one line) before any work.
    """
    out_dir = Path(out) if out is not None else default_out
    cache = Path(cache_dir) if cache_dir is not None else (
        CACHE if out is None else out_dir / "cache")
    for flag, path in (("--out", out_dir), ("--cache-dir", cache)):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{flag}: cannot create {path}: {e.strerror or e}") from e
        if not path.is_dir():
            raise ValueError(f"{flag}: {path} is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag}: cannot write in {path}: permission denied")
    return out_dir, cache


def write_text(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically (a temporary file renamed: never a partial file)."""
    from activeft_jax.atomic import atomic_write

    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def save_figure(fig, path: Path, **kwargs) -> None:
    """`fig.savefig(path)`, atomically."""
    from activeft_jax.atomic import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:] or "png", **kwargs))


# ----------------------------------------------------------------- config fields, by type


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_fields(cfg, spec: dict) -> None:
    """Every field of a study's `Config` by type and range, before any work (ValueError, one line).

    `spec` maps a field to "str", "strs" (a non-empty list of str), ("int", NumberRange),
    ("float", NumberRange), ("ints", NumberRange) or ("floats", NumberRange) (non-empty lists).
    Numbers are checked by `activeft_jax.validation.check_number` (finite, in range), as
    the library's and the command line's options are.
    """
    from activeft_jax.validation import check_number

    for name, kind in spec.items():
        value = getattr(cfg, name)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string; got {value!r}")
            continue
        if kind == "strs":
            if (not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name} must be a non-empty list of strings; got {value!r}")
            continue
        what, allowed = kind
        if what in ("ints", "floats"):
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{name} must be a non-empty list of numbers, each "
                                 f"{allowed.describe()}; got {value!r}")
            items = list(value)
        else:
            items = [value]
        for v in items:
            if what in ("float", "floats") and _is_int(v):
                v = float(v)
            if what in ("int", "ints") and not _is_int(v):
                each = "a list of ints, each " if what == "ints" else ""
                raise ValueError(f"{name} must be {each}{allowed.describe()}; got {value!r}")
            if what in ("float", "floats") and not isinstance(v, (float, np.floating)):
                each = "a list of numbers, each " if what == "floats" else "a number, "
                raise ValueError(f"{name} must be {each}{allowed.describe()}; got {value!r}")
            check_number(v, name, allowed, label=name)
