"""activeft_jax.data: offline tfds builders (array_record, no TensorFlow), `load`, `source`.

Every build goes into a pytest tmp dir; nothing is downloaded. The generic path for other
tfds data sets is tested with `tfds.testing.mock_data` (as in Flax's mnist example) and with
a tiny builder prepared on the spot and read back from its files alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from activeft_jax import data
from activeft_jax.data import builders

DIGITS_COUNTS = {"train": 1423, "test": 374}
MNIST1D_COUNTS = {"train": 4000, "test": 1000}
BBC_COUNTS = {"train": 1794, "test": 431}
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
BBC_PER_CLASS = (510, 386, 417, 511, 401)


@contextlib.contextmanager
def _tempfiles_in_tmp_path(tmp_path_factory):
    """tfds' own builders (mock data, TinyImages, an unprepared data_dir) leave an empty
    `tempfile.mkdtemp("tfds")` each; keep them among pytest's temporary directories."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tempfile")))
        yield


@pytest.fixture(autouse=True)
def _tfds_tempfiles(tmp_path_factory):
    with _tempfiles_in_tmp_path(tmp_path_factory):
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Every offline data set, built once for the module."""
    root = tmp_path_factory.mktemp("tfds")
    for name in data.OFFLINE:
        data.prepare(name, root)
    return root


def _both_splits(name, root):
    return {split: data.load(name, split, data_dir=root) for split in ("train", "test")}


def _check_split_partition(splits, expected_counts, all_ids):
    train, test = splits["train"], splits["test"]
    assert {k: v.size for k, v in splits.items()} == expected_counts
    for ds in (train, test):
        assert ds.ids.shape == ds.y.shape == (ds.size,)
        assert len(set(ds.ids.tolist())) == ds.size  # unique
        assert ds.ids.tolist() == sorted(ds.ids.tolist())  # written in id order
    assert not set(train.ids.tolist()) & set(test.ids.tolist())
    assert set(train.ids.tolist()) | set(test.ids.tolist()) == set(all_ids)


def test_no_tensorflow_needed(data_dir):
    data.load("digits", "test", data_dir=data_dir)
    assert importlib.util.find_spec("tensorflow") is None
    assert "tensorflow" not in sys.modules


def test_digits_equal_sklearn(data_dir):
    from sklearn.datasets import load_digits

    ref = load_digits()
    splits = _both_splits("digits", data_dir)
    _check_split_partition(splits, DIGITS_COUNTS, range(1797))
    for split, ds in splits.items():
        assert ds.text is None and ds.ids.dtype == np.int64 and ds.y.dtype == np.int64
        assert ds.x.dtype == np.uint8 and ds.x.shape == (ds.size, 8, 8, 1)
        np.testing.assert_array_equal(ds.x[..., 0], ref.images[ds.ids])  # exact, 0..16
        np.testing.assert_array_equal(ds.y, ref.target[ds.ids])
        assert ds.num_classes == 10 and ds.class_names == tuple(str(i) for i in range(10))
        assert (ds.name, ds.split) == ("digits", split)
        # The split is the fixed rule on the id, nothing else.
        assert all(builders.is_test("digits", i) == (split == "test") for i in ds.ids.tolist())


def test_mnist1d_equals_make_dataset(data_dir):
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())
    splits = _both_splits("mnist1d", data_dir)
    _check_split_partition(splits, MNIST1D_COUNTS, range(5000))
    for ds, x_ref, y_ref, first in ((splits["train"], ref["x"], ref["y"], 0),
                                    (splits["test"], ref["x_test"], ref["y_test"], 4000)):
        assert ds.x.dtype == np.float32 and ds.x.shape == (ds.size, 40)
        np.testing.assert_array_equal(ds.ids, np.arange(first, first + ds.size))
        np.testing.assert_array_equal(ds.x, x_ref.astype(np.float32))
        np.testing.assert_array_equal(ds.y, y_ref)
        assert ds.num_classes == 10


def test_mnist1d_generation_leaves_global_rngs_alone():
    import random

    np.random.seed(123)
    random.seed(123)
    builders._make_mnist1d()
    after = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.rand(), random.random())


def test_bbc_news_equals_files(data_dir):
    root = builders.bbc_news_dir()
    assert tuple(sorted(p.name for p in root.iterdir() if p.is_dir())) == BBC_CLASSES
    files = {f"{p.parent.name}/{p.stem}": p for p in root.glob("*/*.txt")}
    splits = _both_splits("bbc_news", data_dir)
    _check_split_partition(splits, BBC_COUNTS, files)
    per_class = np.zeros(5, int)
    for split, ds in splits.items():
        assert ds.x is None and ds.text.dtype == object and ds.text.shape == (ds.size,)
        assert ds.class_names == BBC_CLASSES and ds.num_classes == 5
        for i, text, label in zip(ds.ids.tolist(), ds.text, ds.y):
            raw = files[i].read_bytes()
            assert text.encode("utf-8") == raw or text.encode("latin-1") == raw, i
            assert BBC_CLASSES[label] == i.split("/")[0]
            assert builders.is_test("bbc_news", i) == (split == "test")
        per_class += np.bincount(ds.y, minlength=5)
    assert tuple(per_class) == BBC_PER_CLASS
    # The one non-UTF-8 file (a Latin-1 pound sign) is read as text, not mangled.
    sports_199 = dict(zip(*[np.concatenate([s.ids for s in splits.values()]),
                            np.concatenate([s.text for s in splits.values()])]))["sports/199"]
    assert "£15.8m" in sports_199


@pytest.mark.parametrize("name", data.OFFLINE)
def test_two_builds_are_identical(data_dir, name, tmp_path):
    a_dir, b_dir = data_dir, tmp_path  # a second, independent build of this data set alone
    data.prepare(name, b_dir)
    for split in ("train", "test"):
        a, b = data.load(name, split, data_dir=a_dir), data.load(name, split, data_dir=b_dir)
        np.testing.assert_array_equal(a.ids, b.ids)  # same ids, same split, same order
        np.testing.assert_array_equal(a.y, b.y)
        if a.x is not None:
            np.testing.assert_array_equal(a.x, b.x)
        else:
            assert a.text.tolist() == b.text.tolist()
    tfds_name = builders.BUILDERS[name].name
    files_a = sorted((a_dir / tfds_name).glob("*/*.array_record-*"))
    assert len(files_a) == 2
    for fa in files_a:
        assert fa.read_bytes() == (b_dir / fa.relative_to(a_dir)).read_bytes()


def test_split_rule_is_a_function_of_the_id():
    ids = [f"t/{i:03d}" for i in range(2000)]
    flags = [builders.is_test("x", i) for i in ids]
    assert flags == [builders.is_test("x", i) for i in reversed(ids)][::-1]
    assert abs(np.mean(flags) - data.TEST_FRACTION) < 0.03
    assert flags != [builders.is_test("y", i) for i in ids]  # salted by data set name


def test_source_is_random_access_in_load_order(data_dir):
    ds = data.load("mnist1d", "test", data_dir=data_dir)
    src = data.source("mnist1d", "test", data_dir=data_dir)
    assert len(src) == ds.size
    ex = src[17]
    assert int(ex["id"]) == ds.ids[17] and int(ex["label"]) == ds.y[17]
    np.testing.assert_array_equal(ex["x"], ds.x[17])
    batch = src.__getitems__([3, 999, 0])
    assert [int(e["id"]) for e in batch] == [4003, 4999, 4000]


def test_registered_with_tfds(data_dir):
    src = tfds.data_source("activeft_bbc_news", split="test", data_dir=str(data_dir),
                           download=False)
    first = src[0]
    assert first["id"] == b"business/003" or first["id"] == "business/003"
    ds = data.load("activeft_digits", "train[:10]", data_dir=data_dir)
    assert ds.name == "digits" and ds.size == 10
    assert data.load("digits", "train+test", data_dir=data_dir).size == 1797


def test_prepare_keeps_stdout_clean(tmp_path, capfd):
    data.prepare("digits", tmp_path)
    data.prepare("digits", tmp_path)  # second call: a no-op
    assert capfd.readouterr().out == ""
    assert len(list((tmp_path / "activeft_digits").glob("*/*.array_record-*"))) == 2


def test_prepare_leaves_no_temporary_directories(monkeypatch, tmp_path):
    # tfds makes an empty tempfile.mkdtemp("tfds") for every builder of an unprepared
    # data_dir (looking for metadata on GCS) and never removes it; ours skip that lookup.
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert tempfile.gettempdir() == str(temp)
    data.prepare("digits", tmp_path / "data")
    assert data.load("digits", "test", data_dir=tmp_path / "data").size == 374
    assert list(temp.iterdir()) == []


def test_default_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTIVEFT_JAX_DATA", str(tmp_path / "here"))
    assert data.default_data_dir() == tmp_path / "here"
    monkeypatch.delenv("ACTIVEFT_JAX_DATA")
    assert data.default_data_dir() == Path.home() / ".cache" / "activeft_jax" / "tfds"


# ---- the generic path: any tfds data set prepared by the user ---------------------------

@pytest.mark.parametrize("name, shape, num_classes", [("mnist", (28, 28, 1), 10),
                                                      ("cifar10", (32, 32, 3), 10)])
def test_generic_tfds_with_mock_data(tmp_path, name, shape, num_classes):
    with tfds.testing.mock_data(num_examples=8):
        ds = data.load(name, "train", data_dir=tmp_path)
    assert ds.x.shape == (8,) + shape and ds.x.dtype == np.uint8 and ds.text is None
    assert ds.y.shape == (8,) and ds.y.dtype == np.int64
    assert ds.y.min() >= 0 and ds.y.max() < num_classes
    assert ds.num_classes == num_classes and len(ds.class_names) == num_classes
    assert ds.ids.shape == (8,) and ds.name == name
    if name == "mnist":  # no `id` feature: the index in the split
        np.testing.assert_array_equal(ds.ids, np.arange(8))
    else:  # cifar10's own `id` feature, as str
        assert ds.ids.dtype.kind == "U"


def test_generic_text_tfds_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        ds = data.load("imdb_reviews", "test", data_dir=tmp_path)
    assert ds.x is None and ds.text.shape == (5,) and all(isinstance(t, str) for t in ds.text)
    assert ds.class_names == ("neg", "pos")


class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Stands for a data set a user prepared elsewhere: read back from its files alone."""

    name = "activeft_test_tiny_images"
    VERSION = tfds.core.Version("0.1.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(4, 4, 3)),
                "label": tfds.features.ClassLabel(names=["cat", "dog", "owl"]),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
        from PIL import Image

        for i in range(n):
            # A PIL image (or PNG bytes): tfds 4.9.10 encodes numpy images with TensorFlow.
            image = Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8))
            yield i, {"image": image, "label": i % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    with _tempfiles_in_tmp_path(tmp_path_factory):
        TinyImages(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def test_generic_prepared_files_are_read_back(tiny_dir):
    ds = data.load(TinyImages.name, "train", data_dir=tiny_dir)
    assert ds.x.shape == (6, 4, 4, 3) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.x[:, 0, 0, 0], 10 * np.arange(6))
    np.testing.assert_array_equal(ds.y, np.arange(6) % 3)
    np.testing.assert_array_equal(ds.ids, np.arange(6))
    assert ds.class_names == ("cat", "dog", "owl") and ds.num_classes == 3
    assert len(data.source(TinyImages.name, "test", data_dir=tiny_dir)) == 2


def test_generic_bad_split(tiny_dir):
    with pytest.raises(ValueError, match=r"bad split 'valid'.*available: train, test"):
        data.load(TinyImages.name, "valid", data_dir=tiny_dir)


def test_generic_tfrecord_is_refused_with_a_hint(tiny_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    (info_path,) = copy.glob(f"{TinyImages.name}/*/dataset_info.json")
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="stored as tfrecord.*file_format='array_record'"):
        data.load(TinyImages.name, "train", data_dir=copy)


# ---- bad input ---------------------------------------------------------------------------

def test_unknown_name_lists_offline_sets(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'no_such_set'.*digits, mnist1d, "
                                         r"bbc_news"):
        data.load("no_such_set", data_dir=tmp_path)
    with pytest.raises(ValueError, match="non-empty str"):
        data.load("", data_dir=tmp_path)
    with pytest.raises(ValueError, match="builds only the offline"):
        data.prepare("mnist", tmp_path)


def test_bad_split(data_dir):
    with pytest.raises(ValueError, match=r"bad split 'validation' for data set 'digits' "
                                         r"\(available: train, test\)"):
        data.load("digits", "validation", data_dir=data_dir)
    with pytest.raises(ValueError, match="`split` must be a non-empty str"):
        data.load("digits", None, data_dir=data_dir)


def test_not_prepared(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'mnist' is not prepared in .*"
                                                r"file_format='array_record'"):
        data.load("mnist", "train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        data.source("cifar10", "test", data_dir=tmp_path)
