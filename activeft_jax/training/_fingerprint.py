"""Stable, JSON-able fingerprints of the arguments of a run (for the config hash).

A fingerprint must be the same in every process that is given the same
arguments, so it never contains a memory address or an ``id``: arrays become
their dtype, shape and a sha256 of their bytes; functions become their module,
qualified name, a hash of their bytecode and the fingerprints of their
defaults and closure cells (which is where optax keeps its hyperparameters,
so ``optax.adam(1e-3)`` and ``optax.adam(1e-2)`` differ); dataclasses (linen
modules) become their fields; anything else becomes its type's name.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import types
from typing import Any, Mapping

import jax
import numpy as np

__all__ = ["array_digest", "config_hash", "fingerprint", "tree_digest"]

_MAX_DEPTH = 16


def array_digest(a: Any) -> str:
    """'float32[300,2]:<16 hex digits of sha256>' for an array-like."""
    arr = np.asarray(jax.device_get(a))
    if arr.dtype == object:
        raise ValueError(f"cannot fingerprint an object array of shape {arr.shape}.")
    digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]
    return f"{arr.dtype}[{','.join(str(d) for d in arr.shape)}]:{digest}"


def tree_digest(tree: Any) -> Any:
    """{path: array_digest} of every leaf (a single array gives its digest)."""
    if tree is None:
        return None
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return array_digest(tree)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): array_digest(leaf) for path, leaf in flat}


def _code(code: types.CodeType, depth: int) -> Any:
    consts = []
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            consts.append(_code(c, depth + 1) if depth < _MAX_DEPTH else c.co_name)
        elif c is None or isinstance(c, (bool, int, str, bytes)):
            consts.append(c if not isinstance(c, bytes) else c.hex())
        elif isinstance(c, float):
            consts.append(repr(c))
        else:
            consts.append(type(c).__name__)
    blob = json.dumps([code.co_code.hex(), consts, list(code.co_names)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(obj: Any, _depth: int = 0, _path: frozenset = frozenset()) -> Any:
    """A JSON-able description of `obj` that is stable across processes."""
    try:
        return _fingerprint(obj, _depth, _path)
    except Exception:  # an object that resists inspection: its type is all we record
        return f"<{type(obj).__module__}.{type(obj).__qualname__}>"


def _fingerprint(obj: Any, _depth: int, _path: frozenset) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return repr(float(obj))
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        return array_digest(obj)
    if isinstance(obj, (np.dtype, type)):
        return f"type:{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', str(obj))}"
    if _depth > _MAX_DEPTH or id(obj) in _path:
        return f"<{type(obj).__qualname__}>"
    path = _path | {id(obj)}
    d = _depth + 1
    if isinstance(obj, Mapping):
        items = sorted(obj.items(), key=lambda kv: str(kv[0]))
        return {str(k): fingerprint(v, d, path) for k, v in items}
    if isinstance(obj, (list, tuple)):
        items = [fingerprint(v, d, path) for v in obj]
        if hasattr(obj, "_fields"):
            return {"namedtuple": type(obj).__qualname__, "fields": items}
        return items
    if isinstance(obj, (set, frozenset)):
        return sorted(json.dumps(fingerprint(v, d, path), sort_keys=True) for v in obj)
    if isinstance(obj, functools.partial):
        return {"partial": fingerprint(obj.func, d, path), "args": fingerprint(obj.args, d, path),
                "keywords": fingerprint(obj.keywords, d, path)}
    if inspect.ismethod(obj):
        return {"method": obj.__func__.__qualname__, "self": fingerprint(obj.__self__, d, path)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)
                  if f.name not in ("parent", "name")}
        return {"dataclass": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "fields": fingerprint(fields, d, path)}
    if inspect.isfunction(obj):
        closure = [fingerprint(cell.cell_contents, d, path) if _has_contents(cell) else None
                   for cell in (obj.__closure__ or ())]
        return {
            "function": f"{obj.__module__}.{obj.__qualname__}",
            "code": _code(obj.__code__, 0),
            "defaults": fingerprint(obj.__defaults__, d, path),
            "kwdefaults": fingerprint(obj.__kwdefaults__, d, path),
            "closure": closure,
        }
    wrapped = getattr(obj, "__wrapped__", None)
    if wrapped is not None and wrapped is not obj:  # jax.jit, functools.wraps
        return {"wrapped": fingerprint(wrapped, d, path)}
    if inspect.isbuiltin(obj) or isinstance(obj, np.ufunc):
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", ""))
        return f"builtin:{getattr(obj, '__module__', '')}.{name}"
    if inspect.ismodule(obj):
        return f"module:{obj.__name__}"
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    state = getattr(obj, "__dict__", None)
    if callable(obj) and isinstance(state, dict):
        return {"object": name, "state": fingerprint(state, d, path)}
    return f"<{name}>"


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # empty cell
        return False
    return True


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of `config` (a dict of fingerprints)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
