"""Data sets through tfds without TensorFlow: offline corpora built as array_record files and
any prepared tfds data set, read with `tfds.data_source` (DESIGN.md §1, §4).

    from activeft_jax import data
    ds = data.load("digits", split="train")   # Dataset(x, text, y, ids, num_classes, ...)
    src = data.source("mnist1d", "test")      # random access: len(src), src[i]
"""

from activeft_jax.data.builders import TEST_FRACTION as TEST_FRACTION
from activeft_jax.data.builders import ActiveftBbcNews as ActiveftBbcNews
from activeft_jax.data.builders import ActiveftDigits as ActiveftDigits
from activeft_jax.data.builders import ActiveftMnist1d as ActiveftMnist1d
from activeft_jax.data.builders import is_test as is_test
from activeft_jax.data.tfds_sources import OFFLINE as OFFLINE
from activeft_jax.data.tfds_sources import Dataset as Dataset
from activeft_jax.data.tfds_sources import default_data_dir as default_data_dir
from activeft_jax.data.tfds_sources import load as load
from activeft_jax.data.tfds_sources import prepare as prepare
from activeft_jax.data.tfds_sources import source as source

__all__ = [
    "OFFLINE",
    "TEST_FRACTION",
    "ActiveftBbcNews",
    "ActiveftDigits",
    "ActiveftMnist1d",
    "Dataset",
    "default_data_dir",
    "is_test",
    "load",
    "prepare",
    "source",
]
