"""Our GGUF reader (activeft_jax.models.gguf) against gguf-py's `GGUFReader` and
`gguf.quants.dequantize`: the same metadata, tensor directory and float32 bits."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from activeft_jax.models import gguf as ours  # noqa: E402
from activeft_jax.models._assets import smollm2_gguf  # noqa: E402


def _same_as_gguf_py(path, dequantize=lambda name: True):
    """Asserts every field and tensor entry, and the chosen tensors' float32 values,
    equal gguf-py's."""
    f = ours.open_gguf(path)
    r = gguf.GGUFReader(str(path))
    # gguf-py adds three pseudo-fields from the header
    theirs = {k: v for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert list(f.fields) == list(theirs)
    for key, field in theirs.items():
        want = field.contents()
        assert f.field_types[key] == int(field.types[0]), key
        if isinstance(want, float):
            assert np.float64(f.fields[key]) == np.float64(want), key
        else:
            assert f.fields[key] == want, key
    assert [(t.name, t.tensor_type) for t in f.tensors] == [
        (t.name, int(t.tensor_type)) for t in r.tensors]
    kinds = set()
    for a, b in zip(f.tensors, r.tensors):
        if not dequantize(a.name):
            continue
        got = ours.dequantize(a)
        want = np.asarray(gguf.quants.dequantize(b.data, b.tensor_type), np.float32)
        assert got.shape == want.shape, a.name
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=a.name)
        kinds.add(a.tensor_type)
    return f, kinds


def test_smollm2_file_reads_as_gguf_py_reads_it():
    # the tensors of block 0 and those outside the blocks (every type in the file)
    f, kinds = _same_as_gguf_py(smollm2_gguf(),
                                lambda name: not name.startswith("blk.") or name.startswith("blk.0."))
    assert kinds == {0, 3, 8}  # F32, Q4_1, Q8_0
    assert len(f.fields["tokenizer.ggml.tokens"]) == 49152
    assert f.fields["general.architecture"] == "llama"


def test_every_block_type_and_value_type(tmp_path):
    """F16, BF16, Q4_1, Q8_0 here and Q4_0 / Q5_1 through gguf-py; scalars of every
    kind, string and number arrays, a custom alignment."""
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_uint8("u8", 7)
    w.add_int8("i8", -7)
    w.add_uint16("u16", 65535)
    w.add_int16("i16", -300)
    w.add_uint32("u32", 4_000_000_000)
    w.add_int32("i32", -2_000_000_000)
    w.add_float32("f32", 0.1)
    w.add_uint64("u64", 2**63 + 5)
    w.add_int64("i64", -(2**62))
    w.add_float64("f64", 0.1)
    w.add_bool("yes", True)
    w.add_string("s", "héllo")
    w.add_array("strs", ["a", "", "ünï"])
    w.add_array("ints", [1, -2, 3])
    w.add_array("floats", [0.5, 1.5])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 512)).astype(np.float32) * 3
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    for name, qtype in [("bf16", gguf.GGMLQuantizationType.BF16),
                        ("q4_0", gguf.GGMLQuantizationType.Q4_0),
                        ("q4_1", gguf.GGMLQuantizationType.Q4_1),
                        ("q8_0", gguf.GGMLQuantizationType.Q8_0),
                        ("q5_1", gguf.GGMLQuantizationType.Q5_1)]:
        q = gguf.quants.quantize(x, qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f, kinds = _same_as_gguf_py(path)
    assert kinds == {0, 1, 2, 3, 7, 8, 30}
    assert f.fields["s"] == "héllo" and f.fields["strs"] == ["a", "", "ünï"]
    assert f.fields["u64"] == 2**63 + 5 and f.fields["yes"] is True
    # dequantized values are near the originals (a check of the block layouts themselves)
    # (relative to the largest |x|: float16 and bfloat16 rounding, 4- to 8-bit steps)
    scale = np.abs(x).max()
    for t in f.tensors:
        err = np.abs(ours.dequantize(t) - x).max()
        assert err <= {0: 0, 1: 1e-3, 30: 5e-3, 8: 1e-2}.get(t.tensor_type, 0.1) * scale, t.name
    out = np.empty((8, 512), np.float32)
    assert ours.dequantize(f.tensors[4], out=out) is out
    with pytest.raises(ValueError, match="C-contiguous float32 array of shape"):
        ours.dequantize(f.tensors[4], out=np.empty((512, 8), np.float32))


def test_bad_files_raise_one_line_errors(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(ValueError, match="not a GGUF file"):
        ours.open_gguf(bad)
    data = smollm2_gguf().read_bytes()
    bad.write_bytes(data[:5000])   # inside the vocabulary
    with pytest.raises(ValueError, match="truncated GGUF header"):
        ours.open_gguf(bad)
    bad.write_bytes(data[:len(data) // 2])   # header whole, tensors cut
    with pytest.raises(ValueError, match="runs past the end of the file"):
        ours.open_gguf(bad)
