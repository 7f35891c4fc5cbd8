"""Checks and helpers the model wrappers share."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = ["check_texts", "file_fingerprint"]

_WANT = "must be a non-empty list of str"


def check_texts(texts: Any, *, allow_empty: bool = True, name: str = "texts") -> list[str]:
    """`texts` as a list of str, or a ValueError naming what is wrong with it."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"`{name}` {_WANT}; got a single {type(texts).__name__} "
                         "(wrap it in a list).")
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"`{name}` {_WANT}; got {type(texts).__name__}.") from None
    if not texts:
        raise ValueError(f"`{name}` {_WANT}; got an empty list.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"`{name}[{i}]` must be a str; got {type(t).__name__} ({t!r:.60}).")
        if not allow_empty and not t:
            raise ValueError(f"`{name}[{i}]` is an empty string (0 UTF-8 bytes, no tokens).")
    return texts


def file_fingerprint(path: Union[str, Path]) -> str:
    """Short sha256 of a weights file (~0.1 s per 100 MB): changes whenever the file does."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()[:16]}"
