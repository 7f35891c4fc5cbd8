"""The `activeft-jax` command.

    activeft-jax select --strategy vtl --pool pool.npy --target target.npy --k 50 \\
        --noise-std 1.0 [--x64] [--normalize] [--allow-repeats] [--seed 0] --out sel.json
    activeft-jax select --strategy activeft --pool feats.npy --k 1000 --seed 0 \\
        [--init-indices init.npy] [--temperature 0.07] [--steps 300] --out sel.json

    activeft-jax sift --pool pool.npz --prompts prompts.npz --k 10 --prefilter 200 \\
        --lambda 0.01 [--normalize] [--adaptive 0.1] [--x64] --out sel.json
    activeft-jax embed --model minilm --input texts.jsonl --out emb.npy [--cache c.npz]
    activeft-jax score --model smollm2 --input texts.jsonl --out scores.json

Every strategy option is a flag (`--space`, `--iters`, `--temperature`, ...), made from
the strategy registry (`activeft_jax.selection.REGISTRY`): `select --help` lists them
and the strategies that take each. The common options (`--noise-std`, `--kernel`,
`--normalize`, `--allow-repeats`) are ignored by a strategy that has no use for them,
as `activeft_jax.select` ignores them; any other option a strategy does not take is bad
input. The studies are not run from here: see `make run`, `make sift-study` and
`python -m experiments.<name>` in a checkout of the repository.

`select` writes `{"indices": [...], "values": [...]}` (non-finite values, such as the
+inf of maxdist's first pick, are written as null); activeft adds its
`losses` and `init_indices`. `.npy` files hold one array; from an `.npz`,
`--pool` reads the array `pool` (or `features`), `--target` the array
`target` and `--probs` the array `probs`, so one file can hold all of them.
`--init-indices` takes a `.npy`, an `.npz` with `init_indices`, or a JSON list.

`sift` writes `{"indices": [[...], ...], "values": [[...], ...]}`, one row per
prompt (with `--adaptive`, also `"steps": [...]`); `--pool` reads the array
`pool` and `--prompts` the array `prompts` of an `.npz` (or a `.npy`).

`embed` and `score` read JSONL, one `{"text": ...}` object per line (empty lines
and invalid JSON are bad input). `embed` writes float32 [n, d], row i for line i;
`score` writes a JSON list with one `{"tokens", "nll", "bpb"}` object per line.

Bad input prints one line to stderr and exits with status 2; an internal
error prints one line and exits with status 1 (`--debug` shows the traceback).
Numeric options are checked by `validation.NUMERIC_OPTIONS`, as `select` checks them;
paths before any file is read or model loaded: an output (`--out`, `--cache`) that is
also an input, a directory, or in a missing or unwritable directory is bad input.
Output files are written to a temporary file beside them and renamed, so a failed
write (a full disk) leaves no partial file. Progress (`--progress` / `--no-progress`)
is shown by default on a terminal for long inputs; `score` shows it for long inputs
(many texts, or texts of several windows) on a terminal or not: a bar, or a line per
batch of windows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

__all__ = ["main"]

PROG = "activeft-jax"


class BadInput(Exception):
    """User error: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise BadInput(f"{message} (see `{self.prog} --help`)")


def _build_parser() -> argparse.ArgumentParser:
    from activeft_jax.selection import REGISTRY, STRATEGIES

    parser = _Parser(prog=PROG, description="Select the right data to fine-tune large models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "select",
        help="select k pool points with one strategy",
        description="Select k pool points; writes {\"indices\": [...], \"values\": [...]} as JSON.",
    )
    p.add_argument("--strategy", required=True, choices=STRATEGIES, metavar="NAME",
                   help="; ".join(f"{n}: {REGISTRY[n].summary}" for n in STRATEGIES))
    p.add_argument("--pool", help="pool embeddings [N, d]: .npy, or .npz with array 'pool'")
    p.add_argument("--target", help="target embeddings [m, d]: .npy, or .npz with array 'target'")
    p.add_argument("--probs", help="class probabilities [N, C]: .npy, or .npz with array 'probs' "
                   "(information_density, max_entropy, min_margin, least_confidence)")
    p.add_argument("--k", type=int, required=True, help="number of points to select")
    p.add_argument("--lengthscale", type=float, default=None,
                   help="RBF lengthscale (default: the median distance between pool points)")
    p.add_argument("--x64", action="store_true", help="compute in float64")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (" + ", ".join(
        n for n in STRATEGIES if REGISTRY[n].key != "none") + ")")
    _option_flags(p, [REGISTRY[n] for n in STRATEGIES])
    _progress_flags(p)
    p.add_argument("--out", default="-", help="output JSON file ('-' or omitted: stdout)")
    p.set_defaults(func=_select)

    p = sub.add_parser(
        "sift",
        help="SIFT: select k pool points for each prompt (test-time fine-tuning)",
        description="SIFT for a batch of prompts: prefilter the K pool points with the largest "
        "|<x, q>|, then VTL with noise variance lambda and repeats allowed; writes "
        "{\"indices\": [[...], ...], \"values\": [[...], ...]} as JSON, one row per prompt.",
    )
    p.add_argument("--pool", required=True, help="pool embeddings [N, d]: .npy, or .npz with array 'pool'")
    p.add_argument("--prompts", required=True,
                   help="prompt embeddings [P, d]: .npy, or .npz with array 'prompts'")
    p.add_argument("--k", type=int, default=10, help="picks per prompt (default 10)")
    p.add_argument("--x64", action="store_true", help="compute in float64")
    _option_flags(p, [REGISTRY["sift"]])
    p.add_argument("--out", default="-", help="output JSON file ('-' or omitted: stdout)")
    p.set_defaults(func=_sift)

    p = sub.add_parser(
        "embed",
        help="embed texts with a pretrained model (offline weights)",
        description="Embed texts: one JSON object {\"text\": ...} per line in; float32 [n, d] out "
        "(row i for line i).",
    )
    p.add_argument("--model", default="minilm", choices=("minilm", "smollm2"),
                   help="minilm: all-MiniLM-L6-v2 sentence embeddings (d=384, unit norm); "
                   "smollm2: mean of SmolLM2-135M's final hidden states (d=576)")
    p.add_argument("--input", required=True, help="JSONL file, one {\"text\": ...} per line ('-': stdin)")
    p.add_argument("--out", required=True,
                   help="output .npy (float32 [n, d]), or .npz with the array 'pool'")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-normalize", dest="normalize", action="store_false", default=True,
                   help="minilm: keep the mean-pooled vectors unnormalized")
    p.add_argument("--cache", help="embedding cache (.npz): reused if made from the same texts, "
                   "model and options, else (re)computed and written")
    _progress_flags(p)
    p.set_defaults(func=_embed)

    p = sub.add_parser(
        "score",
        help="bits per byte of texts under a language model",
        description="Score texts with a causal LM: writes a JSON list with one "
        "{\"tokens\": T, \"nll\": ..., \"bpb\": ...} per input line; nll is the summed negative "
        "log-likelihood (nats) of tokens 2..T given their prefix, bpb = nll / (ln 2 * UTF-8 bytes).",
    )
    p.add_argument("--model", default="smollm2", choices=("smollm2",))
    p.add_argument("--input", required=True, help="JSONL file, one {\"text\": ...} per line ('-': stdin)")
    p.add_argument("--out", default="-", help="output JSON file ('-' or omitted: stdout)")
    p.add_argument("--window", type=int, default=None,
                   help="tokens per scoring window (default: the model's context length); longer "
                   "texts are scored in overlapping windows, every token once")
    p.add_argument("--batch-size", type=int, default=8)
    _progress_flags(p)
    p.set_defaults(func=_score)

    return parser


def _option_flags(p: argparse.ArgumentParser, records) -> None:
    """One flag per option of the given strategies (`OPTION_HELP` says its type), default None.

    None means "not given": the strategy's own default applies.
    """
    users: dict = {}
    for rec in records:
        for opt in rec.options:
            if opt.help.type is not None:
                users.setdefault(opt.name, []).append((rec.name, opt))
    for name, used in users.items():
        opt = used[0][1]
        kind = opt.help.type
        defaults = {repr(o.default) for _, o in used}
        text = opt.help.help
        if len(records) > 1:
            text += " (" + ", ".join(r for r, _ in used) + ")"
        if len(defaults) == 1 and opt.default is not None:
            text += f"; default {opt.default}"
        kw = dict(dest=name, default=None, help=text)
        if kind is bool:
            p.add_argument(opt.flag, action=argparse.BooleanOptionalAction, **kw)
        elif kind in ("indices", "array", "matrix"):
            p.add_argument(opt.flag, metavar="FILE", **kw)
        else:
            p.add_argument(opt.flag, type=kind, choices=opt.help.choices, **kw)


def _given_options(args: argparse.Namespace, rec) -> dict:
    """The options of `rec` given on the command line; a strategy-specific one it does not take is bad input."""
    from activeft_jax.selection import COMMON_OPTIONS, OPTION_HELP

    taken = rec.option_names
    out = {}
    for name, h in OPTION_HELP.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in taken:
            out[name] = value
        elif name not in COMMON_OPTIONS:
            flag = h.flag or "--" + name.replace("_", "-")
            raise BadInput(f"strategy '{rec.name}' does not take {flag}")
    return out


def _progress_flags(p: argparse.ArgumentParser) -> None:
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar (default: on a terminal, for long inputs)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")


def _load_array(path: Optional[str], name: str, flag: str) -> Optional[np.ndarray]:
    if path is None:
        return None
    if not os.path.exists(path):
        raise BadInput(f"{flag}: no such file: {path}")
    try:
        if path.endswith(".npz"):
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise BadInput(f"{flag}: {path} holds a single .npy array, not an .npz archive; "
                               f"rename it to .npy")
            with z:
                if name == "pool" and name not in z.files and "features" in z.files:
                    name = "features"
                if name not in z.files:
                    raise BadInput(
                        f"{flag}: {path} has no array named '{name}' (it has: {', '.join(z.files) or 'none'})"
                    )
                return z[name]
        if path.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
            if not isinstance(arr, np.ndarray):
                files = list(getattr(arr, "files", []))
                if hasattr(arr, "close"):
                    arr.close()
                raise BadInput(f"{flag}: {path} is an .npz archive (arrays: {', '.join(files) or 'none'}), "
                               f"not a .npy array; rename it to .npz")
            return arr
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"{flag}: cannot read {path}: {_first_line(e)}") from e
    raise BadInput(f"{flag}: expected a .npy or .npz file; got {path}")


def _first_line(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _load_indices(path: Optional[str], flag: str) -> Optional[np.ndarray]:
    if path is None:
        return None
    if path.endswith(".json"):
        if not os.path.exists(path):
            raise BadInput(f"{flag}: no such file: {path}")
        try:
            with open(path) as f:
                values = json.load(f)
            arr = np.asarray(values)
        except (OSError, ValueError) as e:
            raise BadInput(f"{flag}: cannot read {path}: {e}") from e
    else:
        arr = _load_array(path, "init_indices", flag)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise BadInput(f"{flag}: expected a list of integer indices; got shape {arr.shape}, dtype {arr.dtype}")
    return arr


def _load_mask_or_indices(path: str, name: str, flag: str) -> np.ndarray:
    """Pool indices or a bool mask: .npy, .npz (array `name`) or a JSON list."""
    if path.endswith(".json"):
        arr = _load_indices(path, flag)
        if arr.size == 0:
            return arr.astype(np.int32)
        return arr
    arr = _load_array(path, name, flag)
    if arr.ndim != 1 or not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
        raise BadInput(f"{flag}: expected integer pool indices or a bool mask [N]; got shape "
                       f"{arr.shape}, dtype {arr.dtype}")
    return arr


def _load_mask(path: str, name: str, flag: str) -> np.ndarray:
    arr = _load_array(path, name, flag)
    if arr.ndim != 1 or arr.dtype != np.bool_:
        raise BadInput(f"{flag}: expected a bool mask [N]; got shape {arr.shape}, dtype {arr.dtype}")
    return arr


def _as_float(x: Optional[np.ndarray], dtype, flag: str) -> Optional[np.ndarray]:
    if x is None:
        return None
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise BadInput(f"{flag}: expected real numbers; got dtype {x.dtype}")
    return x.astype(dtype, copy=False)


def _select_memory(args: argparse.Namespace, target: Optional[np.ndarray], strategy=None):
    """check(shape, itemsize): refuses, in one line, a pool whose `select` would not fit in memory."""
    from activeft_jax.memory import check_fits, select_estimate

    strategy = strategy or args.strategy
    m = int(target.shape[0]) if target is not None and target.ndim >= 1 else 1

    def check(shape: tuple, itemsize: int) -> None:
        if len(shape) != 2:
            return  # the strategy reports the bad shape
        n, d = shape
        kernel_space = getattr(args, "kernel", None) == "rbf" or getattr(args, "space", None) == "kernel" \
            or (getattr(args, "space", None) in (None, "auto") and d > n)
        pool, state = select_estimate(strategy, n, d, m, max(int(args.k), 0), itemsize,
                                      kernel_space=kernel_space)
        check_fits(f"{strategy} on a {n} x {d} pool", pool, state)

    return check


def _load_pool(path: Optional[str], name: str, flag: str, dtype, check) -> Optional[object]:
    """The pool, read from its file straight onto the device in chunks (never whole on the host).

    `check(shape, itemsize)` runs on the file's header, before anything is read.
    A Fortran-ordered or non-numeric array falls back to `_load_array`.
    """
    import zipfile

    from activeft_jax.memory import read_npy_header, stream_npy, to_device

    if path is None:
        return None
    if not os.path.exists(path):
        raise BadInput(f"{flag}: no such file: {path}")
    if not (path.endswith(".npy") or path.endswith(".npz")):
        raise BadInput(f"{flag}: expected a .npy or .npz file; got {path}")
    try:
        with open(path, "rb") as raw:
            is_zip = raw.read(4) == b"PK\x03\x04"
    except OSError as e:
        raise BadInput(f"{flag}: cannot read {path}: {e.strerror}") from e
    if is_zip != path.endswith(".npz"):
        kind = "an .npz archive" if is_zip else "not an .npz archive"
        raise BadInput(f"{flag}: {path} is {kind}; name a .npy file .npy and an .npz file .npz")
    dtype = np.dtype(dtype)
    try:
        if is_zip:
            with zipfile.ZipFile(path) as z:
                names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
                if name not in names and name == "pool" and "features" in names:
                    name = "features"
                if name not in names:
                    raise BadInput(f"{flag}: {path} has no array named '{name}' "
                                   f"(it has: {', '.join(names) or 'none'})")
                with z.open(name + ".npy") as f:
                    header = read_npy_header(f)
                    if header.fortran_order or not _real_dtype(header.dtype):
                        return _as_float(_load_array(path, name, flag), dtype, flag)
                    check(header.shape, dtype.itemsize)
                    return stream_npy(f, header, dtype)
        with open(path, "rb") as f:
            header = read_npy_header(f)
            if not _real_dtype(header.dtype):
                return _as_float(_load_array(path, name, flag), dtype, flag)
            check(header.shape, dtype.itemsize)
            if header.fortran_order:
                return to_device(np.load(path, mmap_mode="r"), dtype)
            return stream_npy(f, header, dtype)
    except (BadInput, MemoryError):
        raise
    except Exception as e:
        raise BadInput(f"{flag}: cannot read {path}: {e}") from e


def _normalized(pool, target, flag: str):
    """`--normalize`: the pool's rows L2-normalized in place (the rules would normalize a
    copy: a second pool in memory), and the target's or prompts' rows. Both are checked
    first as the rules check them unnormalized (finite; squared norms that fit the dtype)."""
    import jax
    import jax.numpy as jnp

    from activeft_jax.kernels import l2_normalize
    from activeft_jax.memory import normalize_rows_in_place
    from activeft_jax.validation import check_finite, check_magnitude

    if not isinstance(pool, jax.Array) or pool.ndim != 2 or pool.shape[0] == 0:
        return pool, target  # the strategy normalizes (or reports the bad shape)
    check_finite(pool, "pool")
    check_magnitude(pool, "pool")
    if target is not None and target.size > 0 and target.ndim >= 1:
        name = flag.lstrip("-")
        t = jnp.asarray(target, dtype=pool.dtype)
        check_finite(t, name)
        if t.ndim == 2:
            check_magnitude(t, name)
        target = l2_normalize(t)
    return normalize_rows_in_place(pool), target


def _real_dtype(dt: np.dtype) -> bool:
    return (np.issubdtype(dt, np.number) or dt == np.bool_) and not np.issubdtype(dt, np.complexfloating)


def _json_float(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


def _select(args: argparse.Namespace) -> int:
    import jax

    with jax.enable_x64(bool(args.x64)):
        return _select_in_precision(args)


def _select_in_precision(args: argparse.Namespace) -> int:
    import jax

    from activeft_jax.kernels import get_kernel
    from activeft_jax.selection import REGISTRY, TARGETED, select

    dtype = np.float64 if args.x64 else np.float32
    rec = REGISTRY[args.strategy]
    options = _given_options(args, rec)
    _check_numbers(args, options, ("seed", "lengthscale"))
    _check_paths(_input_paths(args, ("pool", "target", "probs", "init_indices", "observed",
                                     "candidates", "prior_cov")), {"--out": args.out})
    if args.pool is None and "pool" in REGISTRY[args.strategy].data:
        raise BadInput(f"--pool is required by strategy '{args.strategy}'")
    if args.strategy in TARGETED and args.target is None:
        raise BadInput(f"strategy '{args.strategy}' needs --target (target embeddings [m, d])")
    target = _as_float(_load_array(args.target, "target", "--target"), dtype, "--target")
    pool = _load_pool(args.pool, "pool", "--pool", dtype, _select_memory(args, target))
    probs = _as_float(_load_array(args.probs, "probs", "--probs"), dtype, "--probs")

    if "init_indices" in options:
        options["init_indices"] = _load_indices(options["init_indices"], "--init-indices")
    if "observed" in options:
        options["observed"] = _load_mask_or_indices(options["observed"], "observed", "--observed")
    if "candidates" in options:
        options["candidates"] = _load_mask(options["candidates"], "candidates", "--candidates")
    if "prior_cov" in options:
        options["prior_cov"] = _as_float(_load_array(options["prior_cov"], "prior_cov",
                                                     "--prior-cov"), dtype, "--prior-cov")
    if "kernel" in options:
        options["kernel"] = get_kernel(options["kernel"], args.lengthscale)
    if "progress" in rec.option_names:  # default: on a terminal, for long work
        progress = args.progress
        if progress is None:
            n = pool.shape[0] if pool is not None and pool.ndim >= 1 else 0
            work, threshold = n * max(args.k, 0), 10**6
            if args.strategy == "activeft":
                work, threshold = work * max(options.get("steps", 300), 0), 10**9
            progress = sys.stderr.isatty() and work >= threshold
        options["progress"] = progress
    if options.get("normalize"):
        pool, target = _normalized(pool, target, "--target")
        options["normalize"] = False
    key = jax.random.key(args.seed)
    if args.strategy == "activeft":
        return _write(_activeft(pool, args.k, key, options), args.out)
    sel = select(args.strategy, pool, target, k=args.k, key=key, probs=probs, **options)
    return _write({
        "indices": [int(i) for i in np.asarray(sel.indices)],
        "values": [_json_float(float(v)) for v in np.asarray(sel.values)],
    }, args.out)


def _sift(args: argparse.Namespace) -> int:
    import jax

    from activeft_jax.selection import REGISTRY, sift

    rec = REGISTRY["sift"]
    options = _given_options(args, rec)
    try:
        _check_numbers(args, options, ())
    except ValueError as e:
        raise BadInput(_flag_names(str(e), rec)) from e
    _check_paths(_input_paths(args, ("pool", "prompts", "observed", "candidates")),
                 {"--out": args.out})
    if "observed" in options:
        options["observed"] = _load_mask_or_indices(options["observed"], "observed", "--observed")
    if "candidates" in options:
        options["candidates"] = _load_mask(options["candidates"], "candidates", "--candidates")
    dtype = np.float64 if args.x64 else np.float32
    with jax.enable_x64(bool(args.x64)):  # a float64 device pool needs x64 on
        pool = _load_pool(args.pool, "pool", "--pool", dtype, _select_memory(args, None, "sift"))
    prompts = _as_float(_load_array(args.prompts, "prompts", "--prompts"), dtype, "--prompts")
    with jax.enable_x64(bool(args.x64)):
        if options.get("normalize"):
            pool, prompts = _normalized(pool, prompts, "--prompts")
            options["normalize"] = False
        try:
            sel = sift(pool, prompts, k=args.k, **options)
        except ValueError as e:  # name the flag, not the Python argument
            raise BadInput(_flag_names(str(e), rec)) from e
        out = {
            "indices": np.asarray(sel.indices).astype(int).tolist(),
            "values": [[_json_float(float(v)) for v in row] for row in np.asarray(sel.values)],
        }
        if options.get("adaptive") is not None:
            out["steps"] = np.asarray(sel.steps).astype(int).tolist()
    return _write(out, args.out)


def _flag_names(msg: str, rec) -> str:
    for opt in rec.options:
        msg = msg.replace(f"`{opt.name}`", opt.flag)
    for name in ("prompts", "pool", "k"):
        msg = msg.replace(f"`{name}`", f"--{name}")
    return msg


def _check_numbers(args: argparse.Namespace, options: dict, extra: Sequence[str]) -> None:
    """Every numeric option against `validation.NUMERIC_OPTIONS`, before any file is read."""
    from activeft_jax.validation import check_number, check_options

    check_options(options)
    for name in extra:
        value = getattr(args, name, None)
        if value is not None:
            check_number(value, name, label="--" + name.replace("_", "-"))


def _input_paths(args: argparse.Namespace, names: Sequence[str]) -> dict:
    from activeft_jax.selection import OPTION_HELP

    out = {}
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, str) and value != "-":
            h = OPTION_HELP.get(name)
            out[(h.flag if h is not None and h.flag else None) or "--" + name.replace("_", "-")] = value
    return out


def _same_file(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _check_paths(inputs: dict, outputs: dict) -> None:
    """Outputs: not an input, not a directory, in an existing writable directory; before any work."""
    for flag, path in outputs.items():
        if path in (None, "-"):
            continue
        for in_flag, in_path in inputs.items():
            if _same_file(path, in_path):
                raise BadInput(f"{flag}: {path} is also the input {in_flag}; write to another file")
        for other_flag, other in outputs.items():
            if other_flag != flag and other not in (None, "-") and _same_file(path, other):
                raise BadInput(f"{flag}: {path} is also {other_flag}; give two different files")
        if os.path.isdir(path):
            raise BadInput(f"{flag}: cannot write {path}: it is a directory")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise BadInput(f"{flag}: cannot write {path}: no such directory {parent}")
        if flag == "--cache" and os.path.isfile(path):
            continue  # a cache in a read-only place may still be read (and is written only if stale)
        if not os.access(parent, os.W_OK | os.X_OK) and not (
                os.path.exists(path) and not os.path.isfile(path)):
            raise BadInput(f"{flag}: cannot write {path}: directory {parent} is not writable")


def _activeft(pool: np.ndarray, k: int, key, options: dict) -> dict:
    """ActiveFT with its loss curve and initial indices in the output."""
    from activeft_jax.selection import fit_activeft

    fit = fit_activeft(pool, k=k, key=key, **options)
    return {
        "indices": [int(i) for i in np.asarray(fit.selection.indices)],
        "values": [_json_float(float(v)) for v in np.asarray(fit.selection.values)],
        "losses": [_json_float(float(v)) for v in np.asarray(fit.losses)],
        "init_indices": [int(i) for i in np.asarray(fit.init_indices)],
    }


def _read_texts(path: str) -> list:
    """The texts of a JSONL file: one JSON object with a string "text" per line."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise BadInput(f"--input: cannot read {path}: {e.strerror}") from e
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"--input: {path} is not UTF-8 (byte {e.start})") from e
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not lines:
        raise BadInput(f"--input: {path} has no lines; expected one {{\"text\": ...}} per line")
    texts = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise BadInput(f"--input: line {i} of {path} is empty; expected one {{\"text\": ...}} per line")
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise BadInput(f"--input: line {i} of {path} is not valid JSON: {e}") from e
        except RecursionError as e:
            raise BadInput(f"--input: line {i} of {path} is nested too deeply to read") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            got = type(obj).__name__ if not isinstance(obj, dict) else (
                "no 'text'" if "text" not in obj else f"'text' of type {type(obj['text']).__name__}")
            raise BadInput(f"--input: line {i} of {path}: expected an object with a string 'text'; got {got}")
        try:
            obj["text"].encode("utf-8")
        except UnicodeEncodeError as e:  # "\ud800": a lone surrogate, not a character
            raise BadInput(f"--input: line {i} of {path}: 'text' holds a lone surrogate "
                           f"(U+{ord(obj['text'][e.start]):04X} at character {e.start}), which is "
                           f"not valid Unicode") from e
        texts.append(obj["text"])
    return texts


def _auto_progress(flag: Optional[bool], n: int, threshold: int) -> bool:
    return flag if flag is not None else (sys.stderr.isatty() and n >= threshold)


def _embed(args: argparse.Namespace) -> int:
    from activeft_jax.embeddings.cache import cached_embeddings

    _check_numbers(args, {}, ("batch_size",))
    if not (args.out.endswith(".npy") or args.out.endswith(".npz")):
        raise BadInput(f"--out: expected a .npy or .npz file; got {args.out}")
    if args.cache is not None and not args.cache.endswith(".npz"):
        raise BadInput(f"--cache: expected a .npz file; got {args.cache}")
    _check_paths({"--input": args.input} if args.input != "-" else {},
                 {"--out": args.out, "--cache": args.cache})
    texts = _read_texts(args.input)
    progress = _auto_progress(args.progress, len(texts), 256)
    if args.model == "minilm":
        from activeft_jax.models.minilm import load_minilm

        model = load_minilm()
        options = {"normalize": args.normalize, "max_seq_length": model.max_seq_length}

        def compute():
            return model.encode(texts, batch_size=args.batch_size, normalize=args.normalize,
                                progress=progress)
    else:
        from activeft_jax.models.smollm2 import load_smollm2

        model = load_smollm2()
        options = {"pooling": "mean", "layer": "final_norm"}

        def compute():
            return model.embed(texts, batch_size=args.batch_size, progress=progress)

    if args.cache is None:
        emb = compute()
    else:
        computed = []

        def compute_once():
            computed.append(compute())
            return computed[0]

        try:
            emb = cached_embeddings(args.cache, compute_once, inputs=texts, model=model.name,
                                    fingerprint=model.fingerprint, options=options,
                                    verbose=progress)
        except OSError as e:
            if not computed:  # reading the cache, or the model, failed
                raise
            raise BadInput(f"--cache: cannot write {args.cache}: {_first_line(e)}") from e
    emb = np.asarray(emb, dtype=np.float32)
    if args.out.endswith(".npz"):
        _write_file(args.out, lambda f: np.savez(f, pool=emb))
    else:
        _write_file(args.out, lambda f: np.save(f, emb))
    return 0


def _score(args: argparse.Namespace) -> int:
    _check_numbers(args, {}, ("batch_size", "window"))
    _check_paths({"--input": args.input} if args.input != "-" else {}, {"--out": args.out})
    texts = _read_texts(args.input)
    for i, t in enumerate(texts, 1):
        if not t:
            raise BadInput(f"--input: line {i} has an empty text; bits per byte needs at least one byte")
    from activeft_jax.models.smollm2 import load_smollm2

    model = load_smollm2()
    if args.window is not None and args.window > model.context_length:
        raise BadInput(f"--window {args.window} exceeds the model's context length {model.context_length}")
    # Long runs show progress by default, a bar on a terminal and a line per batch of
    # windows otherwise (--no-progress: none): many texts, or long ones (~4 bytes a token).
    long_run = len(texts) >= 32 or sum(len(t) for t in texts) >= 4 * 2 * (args.window or 8192)
    progress = args.progress if args.progress is not None else long_run
    scores = model.score(texts, window=args.window, batch_size=args.batch_size,
                         progress=progress)
    out = [{"tokens": int(s["tokens"]), "nll": float(s["nll"]), "bpb": float(s["bpb"])} for s in scores]
    return _write(out, args.out)


def _write(out, path: Optional[str]) -> int:
    text = json.dumps(out)
    if path in (None, "-"):
        print(text)
    else:
        data = (text + "\n").encode("utf-8")
        _write_file(path, lambda f: f.write(data))
    return 0


def _write_file(path: str, write, flag: str = "--out") -> None:
    """`write(f)` to a temporary file renamed to `path`: never a partial file, one line on error."""
    from activeft_jax.atomic import atomic_write

    try:
        atomic_write(path, write)
    except OSError as e:
        raise BadInput(f"{flag}: cannot write {path}: {_first_line(e)}") from e


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = _build_parser().parse_args(argv)
        return args.func(args)
    except BadInput as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # the library's bad-input errors
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line unless --debug
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"{PROG}: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
