"""The `activeft-jax` command.

    activeft-jax select --strategy vtl --pool pool.npy --target target.npy --k 50 \\
        --noise-std 1.0 [--x64] [--normalize] [--allow-repeats] [--seed 0] --out sel.json
    activeft-jax select --strategy activeft --pool feats.npy --k 1000 --seed 0 \\
        [--init-indices init.npy] [--temperature 0.07] [--steps 300] --out sel.json

writes `{"indices": [...], "values": [...]}` (non-finite values, such as the
+inf of maxdist's first pick, are written as null); activeft adds its
`losses` and `init_indices`. `.npy` files hold one array; from an `.npz`,
`--pool` reads the array `pool` (or `features`), `--target` the array
`target` and `--probs` the array `probs`, so one file can hold all of them.
`--init-indices` takes a `.npy`, an `.npz` with `init_indices`, or a JSON list.

Bad input prints one line to stderr and exits with status 2; an internal
error prints one line and exits with status 1 (`--debug` shows the traceback).
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
    from activeft_jax.selection import STRATEGIES

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
                   help="one of: " + ", ".join(STRATEGIES))
    p.add_argument("--pool", help="pool embeddings [N, d]: .npy, or .npz with array 'pool'")
    p.add_argument("--target", help="target embeddings [m, d]: .npy, or .npz with array 'target'")
    p.add_argument("--probs", help="class probabilities [N, C]: .npy, or .npz with array 'probs' "
                   "(information_density, max_entropy)")
    p.add_argument("--k", type=int, required=True, help="number of points to select")
    p.add_argument("--noise-std", type=float, default=0.1,
                   help="observation noise std of the GP rules, > 0 (default 0.1: the reference's "
                   "automatic noise variance 0.01)")
    p.add_argument("--kernel", default="linear", choices=("linear", "cosine", "rbf"))
    p.add_argument("--lengthscale", type=float, default=1.0, help="RBF lengthscale")
    p.add_argument("--space", default="auto", choices=("auto", "weight", "kernel"),
                   help="GP rules: weight or kernel space (auto: by cost)")
    p.add_argument("--formulation", default="reference", choices=("reference", "paper"),
                   help="itl only: the reference's I(f(x); y(A)) or the paper code's form")
    p.add_argument("--beta", type=float, default=1.0, help="information_density exponent")
    p.add_argument("--x64", action="store_true", help="compute in float64")
    norm = p.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="L2-normalize the embeddings first (default: each strategy's own "
                      "default: on for typiclust and probcover, off for the others)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    p.add_argument("--allow-repeats", action="store_true",
                   help="keep picked points as candidates (the reference's behaviour)")
    p.add_argument("--seed", type=int, default=0,
                   help="PRNG seed (random, maxdist, kmeans, kmeans_pp, typiclust, activeft)")
    aft = p.add_argument_group("activeft")
    aft.add_argument("--init-indices", help="B initial prototype indices (.npy, .npz or .json); "
                     "default: B random features drawn from --seed")
    aft.add_argument("--init", default="random", choices=("random", "fps"),
                     help="random features or farthest-point sampling")
    aft.add_argument("--temperature", type=float, default=0.07)
    aft.add_argument("--steps", type=int, default=300)
    aft.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's learning rate")
    aft.add_argument("--batch-size", type=int, default=None,
                     help="random features per step (the official ImageNet mode; default: all)")
    aft.add_argument("--no-prune", dest="prune", action="store_false", default=None,
                     help="compute every assignment densely (default: exact pruning)")
    base = p.add_argument_group("kmeans, typiclust, probcover")
    base.add_argument("--iters", type=int, default=100, help="Lloyd steps (kmeans, typiclust)")
    base.add_argument("--max-clusters", type=int, default=500, help="typiclust: most clusters")
    base.add_argument("--delta", type=float, default=0.6, help="probcover: ball radius")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar (default: on a terminal, for long selections)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--out", default="-", help="output JSON file ('-' or omitted: stdout)")
    p.set_defaults(func=_select)
    return parser


def _load_array(path: Optional[str], name: str, flag: str) -> Optional[np.ndarray]:
    if path is None:
        return None
    if not os.path.exists(path):
        raise BadInput(f"{flag}: no such file: {path}")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if name == "pool" and name not in z.files and "features" in z.files:
                    name = "features"
                if name not in z.files:
                    raise BadInput(
                        f"{flag}: {path} has no array named '{name}' (it has: {', '.join(z.files) or 'none'})"
                    )
                return z[name]
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"{flag}: cannot read {path}: {e}") from e
    raise BadInput(f"{flag}: expected a .npy or .npz file; got {path}")


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


def _as_float(x: Optional[np.ndarray], dtype, flag: str) -> Optional[np.ndarray]:
    if x is None:
        return None
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise BadInput(f"{flag}: expected real numbers; got dtype {x.dtype}")
    return x.astype(dtype, copy=False)


def _json_float(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


def _select(args: argparse.Namespace) -> int:
    import jax

    with jax.enable_x64(bool(args.x64)):
        return _select_in_precision(args)


def _select_in_precision(args: argparse.Namespace) -> int:
    import jax

    from activeft_jax.kernels import get_kernel
    from activeft_jax.selection import TARGETED, select

    dtype = np.float64 if args.x64 else np.float32
    if args.pool is None and args.strategy != "max_entropy":
        raise BadInput(f"--pool is required by strategy '{args.strategy}'")
    if args.strategy in TARGETED and args.target is None:
        raise BadInput(f"strategy '{args.strategy}' needs --target (target embeddings [m, d])")
    pool = _as_float(_load_array(args.pool, "pool", "--pool"), dtype, "--pool")
    target = _as_float(_load_array(args.target, "target", "--target"), dtype, "--target")
    probs = _as_float(_load_array(args.probs, "probs", "--probs"), dtype, "--probs")

    if args.strategy == "activeft":
        return _write(_activeft(args, pool), args.out)
    options = {}
    gp_rules = ("itl", "vtl", "ctl", "mmitl", "undirected_itl", "undirected_vtl")
    if args.strategy in gp_rules:
        options["space"] = args.space
    if args.strategy == "itl":
        options["formulation"] = args.formulation
    if args.strategy == "information_density":
        options["beta"] = args.beta
    if args.strategy in ("kmeans", "typiclust"):
        options["iters"] = args.iters
    if args.strategy == "typiclust":
        options["max_clusters"] = args.max_clusters
    if args.strategy == "probcover":
        options["delta"] = args.delta

    progress = args.progress
    if progress is None:
        n = pool.shape[0] if pool is not None and pool.ndim >= 1 else 0
        sequential = args.strategy in gp_rules + ("maxdist",)
        progress = sys.stderr.isatty() and sequential and n * max(args.k, 0) >= 1_000_000

    kernel = get_kernel(args.kernel, args.lengthscale)
    sel = select(
        args.strategy, pool, target, k=args.k, noise_std=args.noise_std,
        key=jax.random.key(args.seed), allow_repeats=args.allow_repeats,
        normalize=args.normalize, kernel=kernel, probs=probs, progress=progress, **options,
    )
    return _write({
        "indices": [int(i) for i in np.asarray(sel.indices)],
        "values": [_json_float(float(v)) for v in np.asarray(sel.values)],
    }, args.out)


def _activeft(args: argparse.Namespace, pool: np.ndarray) -> dict:
    import jax

    from activeft_jax.selection import fit_activeft

    init = _load_indices(args.init_indices, "--init-indices")
    progress = args.progress
    if progress is None:
        n = pool.shape[0] if pool.ndim >= 1 else 0
        progress = sys.stderr.isatty() and n * max(args.k, 0) * max(args.steps, 0) >= 10**9
    fit = fit_activeft(pool, k=args.k, key=jax.random.key(args.seed), init_indices=init,
                       init=args.init, temperature=args.temperature, steps=args.steps,
                       learning_rate=args.learning_rate, batch_size=args.batch_size,
                       prune=args.prune, progress=progress)
    return {
        "indices": [int(i) for i in np.asarray(fit.selection.indices)],
        "values": [_json_float(float(v)) for v in np.asarray(fit.selection.values)],
        "losses": [_json_float(float(v)) for v in np.asarray(fit.losses)],
        "init_indices": [int(i) for i in np.asarray(fit.init_indices)],
    }


def _write(out: dict, path: Optional[str]) -> int:
    text = json.dumps(out)
    if path in (None, "-"):
        print(text)
    else:
        try:
            with open(path, "w") as f:
                f.write(text + "\n")
        except OSError as e:
            raise BadInput(f"--out: cannot write {path}: {e.strerror}") from e
    return 0


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
