"""Load data sets as numpy arrays (or random-access sources) through tfds, without TensorFlow.

    from activeft_jax import data
    ds = data.load("digits", split="train")        # prepared on first use, then read back
    ds.x.shape, ds.y.shape, ds.ids[:3], ds.class_names
    news = data.load("bbc_news", split="test")     # news.text: [n] str, news.x is None
    cifar = data.load("cifar10", data_dir=...)     # any tfds data set already prepared there

The offline data sets (`OFFLINE`) are built by the builders in `builders.py` into
`data_dir` on first use (`file_format="array_record"`) and read with `tfds.data_source`.
Any other name is a tfds data set that must already be prepared in `data_dir` in a
random-access format (array_record or parquet); nothing is ever downloaded here.

`data_dir` defaults to `$ACTIVEFT_JAX_DATA`, else `~/.cache/activeft_jax/tfds`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np
import tensorflow_datasets as tfds

from activeft_jax.data.builders import BUILDERS

__all__ = ["OFFLINE", "Dataset", "default_data_dir", "load", "prepare", "source"]

#: The data sets that `load` builds offline, by their short names.
OFFLINE: tuple[str, ...] = tuple(BUILDERS)
_BY_TFDS_NAME = {cls.name: short for short, cls in BUILDERS.items()}

_DATA_ENV = "ACTIVEFT_JAX_DATA"
_INPUT_KEYS = ("image", "x", "text")  # first one present is the input, in this order
_LABEL_KEY = "label"


class Dataset(NamedTuple):
    """One split of a labelled data set, as numpy arrays in the order of the source.

    Exactly one of `x` and `text` is set:
      x:     [n, ...] numeric inputs (images [n, h, w, c] as stored, e.g. uint8; signals
             [n, d] float32), or None for a text data set.
      text:  [n] numpy object array of str, or None for a non-text data set.
      y:     int64 [n] class labels in 0..num_classes-1.
      ids:   [n] stable example ids: int64 (digits, mnist1d) or str (bbc_news, and the
             `id` feature of tfds data sets that have one); for a tfds data set without an
             `id` feature, the example's index in what was read (stable for a whole split,
             relative to the slice for a slice such as 'train[10:20]').
      num_classes, class_names: from the label feature (class_names[y[i]] names y[i]).
      name, split: what was loaded.
    """

    x: Optional[np.ndarray]
    text: Optional[np.ndarray]
    y: np.ndarray
    ids: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    split: str

    @property
    def size(self) -> int:
        """The number of examples."""
        return int(self.y.shape[0])


def default_data_dir() -> Path:
    """`$ACTIVEFT_JAX_DATA` if set, else `~/.cache/activeft_jax/tfds`."""
    env = os.environ.get(_DATA_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/activeft_jax/tfds").expanduser()


def _data_dir(data_dir: Union[str, os.PathLike, None]) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def _offline_name(name: str) -> Optional[str]:
    """The short offline name for `name` ("digits" or "activeft_digits"), else None."""
    return name if name in BUILDERS else _BY_TFDS_NAME.get(name)


def _check_args(name: Any, split: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty str; got {name!r}.")
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a non-empty str such as 'train' or 'test' (tfds "
                         f"slices like 'train[:80%]' work too); got {split!r}.")


def prepare(name: str, data_dir: Union[str, os.PathLike, None] = None) -> tfds.core.DatasetBuilder:
    """Builds offline data set `name` into `data_dir` unless it is there; returns its builder.

    Safe to call again (a no-op once prepared). Writes array_record files, needs neither
    TensorFlow nor the network.
    """
    short = _offline_name(name) if isinstance(name, str) else None
    if short is None:
        raise ValueError(f"`prepare` builds only the offline data sets {', '.join(OFFLINE)}; "
                         f"got {name!r}.")
    builder = BUILDERS[short](data_dir=os.fspath(_data_dir(data_dir)),
                              file_format="array_record")
    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(try_download_gcs=False)
        try:
            # tfds prints its "Downloading and preparing ..." lines on stdout; keep stdout
            # for the caller's output (the CLI writes JSON there).
            with contextlib.redirect_stdout(sys.stderr):
                builder.download_and_prepare(download_config=config)
        except Exception:
            # Another process may have finished the same build first; that is fine.
            builder = BUILDERS[short](data_dir=os.fspath(_data_dir(data_dir)),
                                      file_format="array_record")
            if not builder.is_prepared():
                raise
    return builder


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unknown_name(name: str, data_dir: Path) -> ValueError:
    return ValueError(
        f"unknown data set {name!r}: the offline data sets are {', '.join(OFFLINE)}; any other "
        f"name must be a tfds data set prepared in {data_dir} (e.g. 'cifar10')."
    )


def _not_prepared(name: str, data_dir: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"tfds data set {name!r} is not prepared in {data_dir}; prepare it once (online; some "
        f"builders need TensorFlow to prepare, never to read) with "
        f"tfds.builder({name!r}, data_dir={os.fspath(data_dir)!r}, "
        f"file_format='array_record').download_and_prepare(), or pass the `data_dir` that "
        f"holds it."
    )


def _generic_source(name: str, split: str, data_dir: Path):
    """`tfds.data_source` for a prepared tfds data set, with one-line errors."""
    try:
        return tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown_name(name, data_dir) from None
    except Exception as error:  # diagnose: not prepared, wrong format, or a bad split
        original = error
    try:
        builder = tfds.builder(name, data_dir=os.fspath(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown_name(name, data_dir) from None
    if not builder.is_prepared():
        raise _not_prepared(name, data_dir) from None
    file_format = builder.info.file_format
    if file_format not in tfds.core.file_adapters.FileFormat.with_random_access():
        raise ValueError(
            f"tfds data set {name!r} in {data_dir} is stored as {file_format.value}, which "
            f"tfds.data_source cannot read without TensorFlow; prepare it again with "
            f"file_format='array_record' (into another data_dir)."
        ) from None
    if _is_split_error(original):
        raise _bad_split(name, split, builder, original) from None
    raise original


def _is_split_error(error: BaseException) -> bool:
    return isinstance(error, (ValueError, KeyError)) and "split" in str(error).lower()


def _bad_split(name: str, split: str, builder, error: BaseException) -> ValueError:
    available = ", ".join(builder.info.splits.keys()) or "none"
    return ValueError(f"bad split {split!r} for data set {name!r} (available: {available}): "
                      f"{_first_line(error)}")


def source(name: str, split: str = "train", data_dir: Union[str, os.PathLike, None] = None):
    """The random-access tfds data source of one split (for data too large for `load`).

    `len(src)`; `src[i]` is a dict of numpy arrays / bytes (`image`/`x`/`text`, `label`,
    `id`); `src.__getitems__(indices)` reads a batch. Offline data sets are prepared into
    `data_dir` first (a no-op once done); any other name must already be prepared there.
    """
    _check_args(name, split)
    root = _data_dir(data_dir)
    short = _offline_name(name)
    if short is None:
        return _generic_source(name, split, root)
    builder = prepare(short, root)
    try:
        return builder.as_data_source(split=split)
    except (ValueError, KeyError) as error:
        if not _is_split_error(error):
            raise
        raise _bad_split(short, split, builder, error) from None


def _decode_str(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_all(src) -> list[dict]:
    """Every example of a data source, in order.

    One `src[i]` at a time: `__getitems__` is faster on real array_record files but is
    broken under `tfds.testing.mock_data` (tfds 4.9.10 passes no `self` to its mock).
    """
    return [src[i] for i in range(len(src))]


def _label_feature(features, key: str):
    feature = features[key] if key in features else None
    if isinstance(feature, tfds.features.ClassLabel):
        return feature.num_classes, tuple(feature.names)
    return None


def load(name: str, split: str = "train",
         data_dir: Union[str, os.PathLike, None] = None) -> Dataset:
    """One split of a data set as numpy arrays (a `Dataset`).

    Args:
      name: an offline data set (`OFFLINE`: "digits", "mnist1d", "bbc_news", or their
        tfds names "activeft_digits", ...), built into `data_dir` on first use; or the name
        of any tfds data set already prepared in `data_dir` in a random-access format
        (e.g. "cifar10", "cifar100", "imagenet2012"), whose `image` (or `x` / `text`) and
        `label` features become `x` (or `text`) and `y`.
      split: "train", "test" or anything tfds accepts ("train[:10%]", "train+test").
      data_dir: the tfds data directory; default `default_data_dir()`.

    Raises:
      ValueError: an unknown name (the message lists the offline data sets), a bad split, a
        data set stored in a format tfds cannot read without TensorFlow, or features that do
        not map to inputs and labels.
      FileNotFoundError: a tfds data set that is not prepared in `data_dir`.
    """
    src = source(name, split, data_dir)
    short = _offline_name(name)
    features = src.dataset_info.features
    input_key = next((k for k in _INPUT_KEYS if k in features), None)
    label = _label_feature(features, _LABEL_KEY)
    if input_key is None or label is None:
        raise ValueError(
            f"cannot map the features of {name!r} ({', '.join(features.keys())}) to inputs "
            f"and labels: `load` needs one of {', '.join(_INPUT_KEYS)} and a ClassLabel "
            f"{_LABEL_KEY!r}; use `source({name!r}, ...)` to read the raw examples."
        )
    examples = _read_all(src)
    n = len(examples)
    y = np.asarray([int(ex[_LABEL_KEY]) for ex in examples], dtype=np.int64).reshape(n)
    if "id" in features:
        raw_ids = [ex["id"] for ex in examples]
        if n and isinstance(np.asarray(raw_ids[0]).item(), (bytes, str)):
            ids = np.asarray([_decode_str(i) for i in raw_ids], dtype=str).reshape(n)
        else:
            ids = np.asarray(raw_ids, dtype=np.int64).reshape(n)
    else:
        ids = np.arange(n, dtype=np.int64)
    x = text = None
    if input_key == "text":
        text = np.empty(n, dtype=object)
        text[:] = [_decode_str(ex["text"]) for ex in examples]
    else:
        dtype = getattr(features[input_key], "np_dtype", None)
        shape = tuple(features[input_key].shape)
        x = (np.stack([np.asarray(ex[input_key]) for ex in examples]) if n else
             np.zeros((0,) + tuple(d or 0 for d in shape), dtype=dtype))
    num_classes, class_names = label
    return Dataset(x=x, text=text, y=y, ids=ids, num_classes=num_classes,
                   class_names=class_names, name=short or name, split=split)
