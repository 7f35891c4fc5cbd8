"""Embed a data set once, reload it afterwards: an embedding cache that knows when it is stale.

    emb = cached_embeddings("cache/bbc_minilm.npz", lambda: model.encode(texts),
                            inputs=texts, model=model.name, fingerprint=model.fingerprint,
                            options={"normalize": True})

The file is an `.npz` holding the array `embeddings` and a JSON `meta` record: the
model's name and weights fingerprint, the options that change the result, the dtype
and shape, and a sha256 of the inputs (texts, or an array's dtype, shape and bytes).
On the next call the record is compared with the present one; any difference (other
texts, a different model or weights file, other options, a damaged file) makes the
cache stale, and it is recomputed and rewritten (or, with `on_stale="error"`, a
`StaleCacheError` says what changed). Files are written to a temporary name and
renamed, so an interrupted run never leaves a half-written cache behind; the
temporary file of a write that was killed is deleted by the next call for the
same path (`activeft_jax.atomic.remove_stale`: only ``<name>.tmp-<host>-<pid>-<hex>``
files of processes that no longer run).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from activeft_jax.atomic import atomic_file, remove_stale

__all__ = [
    "StaleCacheError",
    "cache_status",
    "cached_embeddings",
    "hash_inputs",
    "load_embeddings",
    "save_embeddings",
]

FORMAT = "activeft_jax.embeddings/1"
PathLike = Union[str, "os.PathLike[str]"]


class StaleCacheError(RuntimeError):
    """The cache file exists but was made from other inputs, model or options."""


def hash_inputs(inputs: Any) -> str:
    """sha256 of what was embedded: a sequence of texts or an array.

    Texts are hashed with their lengths, so ["ab", "c"] and ["a", "bc"] differ.
    Arrays are hashed with their dtype and shape.
    """
    h = hashlib.sha256()
    if isinstance(inputs, str):
        raise ValueError("inputs must be a sequence of texts or an array, not a single str")
    if isinstance(inputs, (list, tuple)) and all(isinstance(t, str) for t in inputs):
        h.update(b"texts\0")
        for t in inputs:
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return h.hexdigest()
    arr = np.ascontiguousarray(np.asarray(inputs))
    if arr.dtype == object:
        raise ValueError(f"inputs must be texts or a numeric array; got an object array of shape {arr.shape}")
    h.update(f"array\0{arr.dtype.str}\0{arr.shape}\0".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _meta(embeddings: Optional[np.ndarray], inputs_hash: str, model: str, fingerprint: str,
          options: Optional[Mapping[str, Any]]) -> dict:
    meta = {
        "format": FORMAT,
        "model": str(model),
        "fingerprint": str(fingerprint),
        "options": json.loads(json.dumps(dict(options or {}), sort_keys=True, default=str)),
        "inputs_sha256": inputs_hash,
    }
    if embeddings is not None:
        meta["dtype"] = np.asarray(embeddings).dtype.str
        meta["shape"] = list(np.shape(embeddings))
    return meta


def save_embeddings(path: PathLike, embeddings: Any, meta: Mapping[str, Any]) -> None:
    """Write `embeddings` and `meta` to `path` (.npz) atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"cache path must end in .npz; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as f:
        np.savez(f, embeddings=np.asarray(embeddings), meta=np.array(json.dumps(dict(meta))))


def load_embeddings(path: PathLike) -> tuple[np.ndarray, dict]:
    """Read a cache file: (embeddings, meta). Raises `StaleCacheError` if it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            emb = z["embeddings"]
            meta = json.loads(str(z["meta"]))
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, not an npz, missing arrays, bad JSON
        raise StaleCacheError(f"cannot read cache {str(path)!r}: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StaleCacheError(f"{str(path)!r} is not an activeft_jax embedding cache")
    if list(emb.shape) != meta.get("shape") or emb.dtype.str != meta.get("dtype"):
        raise StaleCacheError(f"cache {str(path)!r} is damaged: array {emb.dtype.str}{list(emb.shape)} "
                              f"but meta says {meta.get('dtype')}{meta.get('shape')}")
    return emb, meta


def cache_status(path: PathLike, inputs: Any, *, model: str, fingerprint: str = "",
                 options: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """Why the cache at `path` cannot be used for these inputs, or None if it can."""
    try:
        _, meta = load_embeddings(path)
    except FileNotFoundError:
        return "no cache file"
    except StaleCacheError as e:
        return str(e)
    return _difference(meta, _meta(None, hash_inputs(inputs), model, fingerprint, options))


def _difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> Optional[str]:
    for key, what in (("model", "model"), ("fingerprint", "model weights"),
                      ("options", "options"), ("inputs_sha256", "inputs")):
        if old.get(key) != new.get(key):
            if key == "inputs_sha256":
                return "the inputs changed (different texts or array)"
            return f"the {what} changed: cache has {old.get(key)!r}, now {new.get(key)!r}"
    return None


def cached_embeddings(path: Optional[PathLike], compute: Callable[[], Any], *, inputs: Any,
                      model: str, fingerprint: str = "",
                      options: Optional[Mapping[str, Any]] = None,
                      on_stale: str = "recompute", verbose: bool = False) -> np.ndarray:
    """Embeddings of `inputs` from the cache at `path`, or `compute()`d and saved there.

    Args:
      path: the cache file (.npz); None disables caching (just calls `compute`).
      compute: zero-argument function returning the embeddings [n, ...].
      inputs: what `compute` embeds (texts or an array); only its hash is stored.
      model: the model's name; fingerprint: anything that changes with its weights.
      options: settings that change the result (pooling, normalization, layer, dtype).
      on_stale: "recompute" (default: recompute and overwrite a stale cache) or
        "error" (raise `StaleCacheError` saying what changed).
      verbose: say on stderr whether the cache was used or why it was not.

    Returns:
      The embeddings as a NumPy array, exactly as saved.
    """
    if on_stale not in ("recompute", "error"):
        raise ValueError(f"on_stale must be 'recompute' or 'error'; got {on_stale!r}")
    if path is None:
        return np.asarray(compute())
    if Path(path).suffix != ".npz":
        raise ValueError(f"cache path must end in .npz; got {str(path)!r}")
    remove_stale(path)  # the temporary file of a killed write
    inputs_hash = hash_inputs(inputs)
    want = _meta(None, inputs_hash, model, fingerprint, options)
    reason: Optional[str]
    try:
        emb, meta = load_embeddings(path)
        reason = _difference(meta, want)
    except FileNotFoundError:
        reason = "no cache file"
        emb = None
    except StaleCacheError as e:
        reason, emb = str(e), None
    if emb is not None and reason is None:
        if verbose:
            _say(f"embedding cache hit: {path}")
        return emb
    if reason != "no cache file" and on_stale == "error":
        raise StaleCacheError(f"stale embedding cache {str(path)!r}: {reason}")
    if verbose:
        _say(f"embedding cache {path}: {reason}; computing")
    emb = np.asarray(compute())
    save_embeddings(path, emb, _meta(emb, inputs_hash, model, fingerprint, options))
    return emb


def _say(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)
