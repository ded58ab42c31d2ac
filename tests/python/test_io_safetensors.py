"""csrc/io safetensors (via _core): round trips of every dtype, interop with the `safetensors`
package and transformers (sharded checkpoints both ways), a seeded fuzz of truncations and byte
flips, and one hostile header per validation rule with its message."""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from ecomllm import _core

# Shared with the pure-Python reader's tests: value generators and the optional references.
from test_safetensors import SHAPES, _values, safetensors, st_np, st_torch, torch
from test_safetensors import _assert_same as _same

try:
    import transformers
except Exception:  # pragma: no cover
    transformers = None

needs_st = pytest.mark.skipif(st_np is None, reason="the safetensors package is not importable")
needs_torch = pytest.mark.skipif(st_torch is None, reason="torch / safetensors.torch is not importable")
needs_hf = pytest.mark.skipif(transformers is None or torch is None, reason="transformers is not importable")

BF16 = np.dtype(ml_dtypes.bfloat16)
ALL_DTYPES = {  # in the order of the StDType enum
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"), "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"), "F16": np.dtype("<f2"), "BF16": BF16, "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"), "F32": np.dtype("<f4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
ITEMSIZE = {k: v.itemsize for k, v in ALL_DTYPES.items()}
FLOATS = ("F16", "BF16", "F32", "F64")


def _all_tensors(seed=0):
    return {f"{k}.{i}": _values(dt, s, seed=seed + i) for k, dt in ALL_DTYPES.items() for i, s in enumerate(SHAPES)}


# ---- round trips -------------------------------------------------------------------------------

def test_round_trip_every_dtype(tmp_path):
    tensors = _all_tensors()
    p = tmp_path / "all.safetensors"
    _core.save_safetensors(p, tensors, metadata={"format": "pt", "note": "ünïcode ✓", "empty": ""})
    f = _core.SafetensorsFile.open(p)
    assert f.path == str(p)
    assert f.metadata() == {"format": "pt", "note": "ünïcode ✓", "empty": ""}
    assert [t[0] for t in f.tensors()] == list(tensors), "header order = the given order"
    assert len(f) == len(tensors) and "F32.1" in f and "nope" not in f
    for name, dtype_name, shape in f.tensors():
        want = tensors[name]
        assert dtype_name == name.split(".")[0] and shape == want.shape
        view = f.numpy(name)
        _same(view, want, name)
        assert not view.flags.writeable
        if dtype_name in FLOATS:
            np.testing.assert_array_equal(f.read_f32(name), want.astype(np.float32), err_msg=name)
        else:
            with pytest.raises(ValueError, match="cannot be read as float32"):
                f.read_f32(name)
    # layout: 8-byte aligned data section, header padded with spaces, tensors contiguous in order
    blob = p.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0
    header = json.loads(blob[8:8 + n])
    assert list(header)[0] == "__metadata__"
    offset = 0
    for name, arr in tensors.items():
        assert header[name]["data_offsets"] == [offset, offset + arr.nbytes]
        offset += arr.nbytes
    assert len(blob) == 8 + n + offset
    with pytest.raises(ValueError, match="no tensor named 'missing'"):
        f.numpy("missing")


def test_no_metadata_and_empty_files(tmp_path):
    p = tmp_path / "e.safetensors"
    _core.save_safetensors(p, {})
    f = _core.SafetensorsFile.open(p)
    assert f.tensors() == [] and f.metadata() == {}
    assert p.read_bytes() == struct.pack("<Q", 8) + b"{}      "
    _core.save_safetensors(p, {"a": np.zeros((0, 5), np.float32), "b": np.zeros((2, 0), BF16)})
    f = _core.SafetensorsFile.open(p)
    assert "__metadata__" not in p.read_bytes().decode("latin-1")
    assert f.numpy("a").shape == (0, 5) and f.numpy("b").dtype == BF16
    assert f.read_f32("b").shape == (2, 0)


def test_views_keep_the_mapping_alive(tmp_path):
    p = tmp_path / "k.safetensors"
    x = np.arange(1000, dtype=np.float32)
    _core.save_safetensors(p, {"x": x})
    view = _core.SafetensorsFile.open(p).numpy("x")
    ck_view = _core.Checkpoint.open(p).numpy("x")
    import gc
    gc.collect()
    np.testing.assert_array_equal(view, x)
    np.testing.assert_array_equal(ck_view, x)


def test_save_converts_non_contiguous_and_big_endian(tmp_path):
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    be = np.arange(10, dtype=">i4")
    p = tmp_path / "x.safetensors"
    _core.save_safetensors(p, {"view": base[:, ::3], "t": base.T, "be": be, "s": np.float64(2.5), "l": [1, 2]})
    f = _core.SafetensorsFile.open(p)
    _same(f.numpy("view"), np.ascontiguousarray(base[:, ::3]))
    _same(f.numpy("t"), np.ascontiguousarray(base.T))
    _same(f.numpy("be"), be.astype("<i4"))
    _same(f.numpy("s"), np.array(2.5))
    _same(f.numpy("l"), np.array([1, 2]))


def test_save_refuses_bad_input_and_leaves_nothing(tmp_path):
    p = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="complex64 cannot be stored"):
        _core.save_safetensors(p, {"a": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="cannot be stored"):
        _core.save_safetensors(p, {"a": np.array(["x"])})
    for name in ("", "__metadata__"):
        with pytest.raises(ValueError, match="invalid tensor name"):
            _core.save_safetensors(p, {name: np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="tensor names must be strings"):
        _core.save_safetensors(p, {1: np.zeros(1, np.float32)})
    for bad in ({"a": 1}, {1: "a"}):
        with pytest.raises(ValueError, match="metadata keys and values must be strings"):
            _core.save_safetensors(p, {"x": np.zeros(1, np.float32)}, metadata=bad)
    with pytest.raises(RuntimeError, match="temporary file"):
        _core.save_safetensors(tmp_path / "no" / "such" / "dir.safetensors", {"x": np.zeros(1, np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_and_leaves_no_temp_file(tmp_path):
    p = tmp_path / "w.safetensors"
    for i in range(3):
        _core.save_safetensors(p, {"x": np.full(1000, i, np.int32)})
        assert [q.name for q in tmp_path.iterdir()] == ["w.safetensors"]
        assert _core.SafetensorsFile.open(p).numpy("x")[0] == i
    assert (os.stat(p).st_mode & 0o777) == 0o644


# ---- the reference implementation --------------------------------------------------------------

NUMPY_DTYPES = [k for k in ALL_DTYPES if k != "BF16"]


@needs_st
def test_we_read_reference_numpy_files(tmp_path):
    tensors = {f"{k}.{i}": _values(ALL_DTYPES[k], s, seed=i + 1) for k in NUMPY_DTYPES for i, s in enumerate(SHAPES)}
    p = tmp_path / "ref.safetensors"
    st_np.save_file(tensors, str(p), metadata={"format": "np", "x": "y"})
    f = _core.SafetensorsFile.open(p)
    assert f.metadata() == {"format": "np", "x": "y"}
    assert {t[0] for t in f.tensors()} == set(tensors)
    for k, v in tensors.items():
        _same(f.numpy(k), v, k)


@needs_torch
def test_we_read_reference_torch_files_with_bf16(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w_bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "s_bf16": torch.tensor(1.25, dtype=torch.bfloat16),
        "w_f16": torch.randn(3, 4, generator=g).half(),
        "w_f32": torch.randn(33, generator=g),
        "i64": torch.arange(-5, 5),
        "empty": torch.zeros(0, 4, dtype=torch.bfloat16),
    }
    p = tmp_path / "torch.safetensors"
    st_torch.save_file(tensors, str(p), metadata={"format": "pt"})
    f = _core.SafetensorsFile.open(p)
    for k, t in tensors.items():
        view = f.numpy(k)
        assert view.shape == tuple(t.shape)
        if t.dtype == torch.bfloat16:
            assert view.dtype == BF16
            np.testing.assert_array_equal(view.view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))
        else:
            _same(view, t.numpy(), k)
        if t.is_floating_point():
            np.testing.assert_array_equal(f.read_f32(k), t.float().numpy(), err_msg=k)


@needs_st
def test_reference_reads_our_files(tmp_path):
    tensors = {k: v for k, v in _all_tensors(seed=5).items() if not k.startswith("BF16")}
    p = tmp_path / "ours.safetensors"
    _core.save_safetensors(p, tensors, metadata={"who": "ecomllm"})
    loaded = st_np.load_file(str(p))
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        _same(loaded[k], v, k)
    with safetensors.safe_open(str(p), framework="np") as f:
        assert f.metadata() == {"who": "ecomllm"}


@needs_torch
def test_torch_reads_our_bf16_files(tmp_path):
    vals = np.random.default_rng(3).standard_normal((5, 7)).astype(np.float32)
    tensors = {"w": vals.astype(BF16), "s": np.array(-2.5, BF16), "h": vals.astype(np.float16),
               "odd": np.arange(3, dtype=np.int8), "f": vals}
    p = tmp_path / "ours.safetensors"
    _core.save_safetensors(p, tensors)
    back = st_torch.load_file(str(p))
    assert back["w"].dtype == torch.bfloat16 and back["s"].dtype == torch.bfloat16
    np.testing.assert_array_equal(back["w"].view(torch.int16).numpy().view(np.uint16), tensors["w"].view(np.uint16))
    assert back["s"].shape == () and back["s"].item() == -2.5
    np.testing.assert_array_equal(back["h"].numpy(), tensors["h"])
    np.testing.assert_array_equal(back["odd"].numpy(), tensors["odd"])
    np.testing.assert_array_equal(back["f"].numpy(), vals)


# ---- Hugging Face checkpoints ------------------------------------------------------------------

def _tiny_llama(dtype=None):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    return model.to(dtype) if dtype is not None else model


@needs_hf
@pytest.mark.parametrize("dtype", [torch.float32 if torch else None, torch.bfloat16 if torch else None],
                         ids=["fp32", "bf16"])
def test_transformers_sharded_checkpoint_opens(tmp_path, dtype):
    model = _tiny_llama(dtype)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    shards = sorted(q.name for q in tmp_path.glob("model-*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").exists() and len(shards) >= 2
    ck = _core.Checkpoint.open(tmp_path)
    sd = model.state_dict()
    assert ck.names() == sorted(sd)
    assert sorted(os.path.basename(f) for f in ck.files()) == shards
    for name, t in sd.items():
        assert name in ck
        view = ck.numpy(name)
        assert view.shape == tuple(t.shape), name
        if dtype == torch.bfloat16:
            np.testing.assert_array_equal(view.view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))
        else:
            np.testing.assert_array_equal(view, t.numpy(), err_msg=name)
        np.testing.assert_array_equal(ck.read_f32(name), t.float().numpy(), err_msg=name)
    with pytest.raises(ValueError, match="no tensor named 'lm_head.bias'"):
        ck.read_f32("lm_head.bias")


@needs_hf
def test_transformers_single_file_checkpoint_opens(tmp_path):
    model = _tiny_llama()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for path in (tmp_path, tmp_path / "model.safetensors"):
        ck = _core.Checkpoint.open(path)
        assert ck.names() == sorted(model.state_dict())
        np.testing.assert_array_equal(ck.numpy("lm_head.weight"), model.lm_head.weight.detach().numpy())


@needs_hf
@pytest.mark.parametrize("max_shard_bytes", [200_000, 10**9], ids=["sharded", "single"])
def test_transformers_loads_our_checkpoint(tmp_path, max_shard_bytes):
    model = _tiny_llama()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    model.config.save_pretrained(tmp_path)
    _core.save_checkpoint(tmp_path, sd, metadata={"format": "pt"}, max_shard_bytes=max_shard_bytes)
    if max_shard_bytes < 10**9:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert index["metadata"]["total_size"] == sum(v.nbytes for v in sd.values())
        assert sorted(index["weight_map"]) == sorted(sd)
        assert not (tmp_path / "model.safetensors").exists()
        shards = sorted(q.name for q in tmp_path.glob("model-*.safetensors"))
        n = len(shards)
        assert n >= 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        for shard in shards:  # each shard fits, unless it holds a single larger tensor
            f = _core.SafetensorsFile.open(tmp_path / shard)
            size = sum(math.prod(s) * ITEMSIZE[d] for _, d, s in f.tensors())
            assert size <= max_shard_bytes or len(f.tensors()) == 1
    else:
        assert not list(tmp_path.glob("model-*")) and not (tmp_path / "model.safetensors.index.json").exists()
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    for k, v in loaded.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), sd[k], err_msg=k)
    ids = torch.tensor([[1, 5, 9, 200, 3]])
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(ids).logits.numpy(), model(ids).logits.numpy())
    ck = _core.Checkpoint.open(tmp_path)
    assert ck.names() == sorted(sd) and ck.metadata() == {"format": "pt"}


def test_save_checkpoint_switches_layouts_without_stale_files(tmp_path):
    tensors = {f"t{i}": np.full((100,), i, np.float32) for i in range(10)}  # 400 bytes each
    _core.save_checkpoint(tmp_path, tensors, max_shard_bytes=1000)  # 2 per shard -> 5 shards
    assert len(list(tmp_path.glob("model-*-of-00005.safetensors"))) == 5
    ck = _core.Checkpoint.open(tmp_path)
    assert ck.file_of("t0").endswith("model-00001-of-00005.safetensors")
    assert ck.file_of("t9").endswith("model-00005-of-00005.safetensors")
    (tmp_path / "config.json").write_text("{}")
    _core.save_checkpoint(tmp_path, tensors, max_shard_bytes=1500)  # 3 per shard -> 4 shards
    assert sorted(q.name for q in tmp_path.iterdir()) == ["config.json", "model-00001-of-00004.safetensors",
                                                          "model-00002-of-00004.safetensors",
                                                          "model-00003-of-00004.safetensors",
                                                          "model-00004-of-00004.safetensors",
                                                          "model.safetensors.index.json"]
    _core.save_checkpoint(tmp_path, tensors, max_shard_bytes=4000)  # fits -> one file
    assert sorted(q.name for q in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    ck = _core.Checkpoint.open(tmp_path)
    for k, v in tensors.items():
        np.testing.assert_array_equal(ck.numpy(k), v)
    big = {"small": np.zeros(10, np.float32), "huge": np.zeros(1000, np.float32), "s2": np.zeros(10, np.float32)}
    _core.save_checkpoint(tmp_path / "new" / "dir", big, max_shard_bytes=100)  # a tensor over the limit
    ck = _core.Checkpoint.open(tmp_path / "new" / "dir")
    assert len(ck.files()) == 3 and ck.file_of("huge").endswith("model-00002-of-00003.safetensors")
    with pytest.raises(ValueError, match="max_shard_bytes must be positive"):
        _core.save_checkpoint(tmp_path, tensors, max_shard_bytes=0)


# ---- hostile checkpoints -------------------------------------------------------------------------

def _sharded(tmp_path, weight_map=None, index=None):
    _core.save_safetensors(tmp_path / "a.safetensors", {"x": np.zeros(2, np.float32), "y": np.ones(1, np.int8)})
    _core.save_safetensors(tmp_path / "b.safetensors", {"z": np.zeros(3, np.float32)})
    if index is None:
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return tmp_path


GOOD_MAP = {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}


@pytest.mark.parametrize("index, message", [
    ({**GOOD_MAP, "w": "a.safetensors"}, r"weight_map puts 'w' in a.safetensors, which does not contain it"),
    ({"x": "a.safetensors", "z": "b.safetensors"}, r"tensor 'y' of a.safetensors is missing from weight_map"),
    ({**GOOD_MAP, "z": "a.safetensors", "q": "b.safetensors"}, r"weight_map puts '(q|z)'"),
    ({**GOOD_MAP, "x": "../a.safetensors"}, r"expected a file name in the same directory"),
    ({**GOOD_MAP, "x": 3}, r"weight_map entry of 'x' is not a file name"),
    ({**GOOD_MAP, "w": "c.safetensors"}, r"c.safetensors: cannot open"),
    ("[1]", r"expected a JSON object with a \"weight_map\" object"),
    ("{\"weight_map\": ", r"not valid JSON"),
])
def test_checkpoint_index_must_agree_with_shards(tmp_path, index, message):
    d = _sharded(tmp_path, index=index if isinstance(index, str) else {"weight_map": index})
    with pytest.raises(ValueError, match=message):
        _core.Checkpoint.open(d)


def test_checkpoint_good_index_and_missing_files(tmp_path):
    ck = _core.Checkpoint.open(_sharded(tmp_path, GOOD_MAP))
    assert ck.names() == ["x", "y", "z"] and ck.file_of("z").endswith("b.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither model.safetensors nor model.safetensors.index.json"):
        _core.Checkpoint.open(tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot open"):
        _core.Checkpoint.open(tmp_path / "missing.safetensors")


# ---- hostile files: one per validation rule ------------------------------------------------------

def _write(path, header, data=b"", length=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


HOSTILE = [
    # (header, data, length override, message)
    ("short", None, b"", None, r"file is 5 bytes, too short"),
    ("length_past_end", {"a": _entry()}, b"\0" * 8, 10_000, r"header length 10000 does not fit the file"),
    ("length_over_limit", {}, b"", 200 << 20, r"header length 209715200 exceeds the 104857600-byte limit"),
    ("not_utf8", b'{"a\xff": 1}', b"", None, r"header is not valid UTF-8 JSON"),
    ("not_json", b'{"a": ', b"", None, r"header is not valid UTF-8 JSON"),
    ("empty_header", b"", b"", None, r"header is not valid UTF-8 JSON"),
    ("not_object", [1, 2], b"", None, r"header is not a JSON object"),
    ("too_deep", b"[" * 100 + b"]" * 100, b"", None, r"nests deeper than 16 levels"),
    ("duplicate", b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, '
                  b'"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}', b"", None, r"twice"),
    ("entry_not_object", {"a": [1]}, b"", None, r"tensor 'a': entry is not an object"),
    ("unknown_key", {"a": {**_entry(), "extra": 1}}, b"\0" * 8, None, r"tensor 'a': unknown key 'extra'"),
    ("missing_key", {"a": {"dtype": "F32", "data_offsets": [0, 8]}}, b"\0" * 8, None,
     r"tensor 'a': missing key 'shape'"),
    ("unknown_dtype", {"a": _entry(dtype="F8")}, b"\0" * 8, None, r"tensor 'a': unknown dtype \"F8\""),
    ("lowercase_dtype", {"a": _entry(dtype="f32")}, b"\0" * 8, None, r"unknown dtype \"f32\""),
    ("dtype_not_string", {"a": _entry(dtype=4)}, b"\0" * 8, None, r"unknown dtype 4"),
    ("shape_not_list", {"a": {**_entry(), "shape": 2}}, b"\0" * 8, None, r"tensor 'a': shape is not a list"),
    ("shape_negative", {"a": _entry(shape=(-2,))}, b"\0" * 8, None, r"shape must be a list of non-negative integers"),
    ("shape_float", {"a": _entry(shape=(2.0,))}, b"\0" * 8, None, r"non-negative integers, got \[2\.0\]"),
    ("shape_bool", {"a": _entry(shape=(True, 2))}, b"\0" * 8, None, r"non-negative integers"),
    ("shape_string", {"a": _entry(shape=("2",))}, b"\0" * 8, None, r"non-negative integers"),
    ("shape_over_int64", {"a": _entry(shape=(2**63,))}, b"", None, r"non-negative integers"),
    ("shape_overflow", {"a": _entry(shape=(2**32, 2**32))}, b"", None, r"too large \(its byte size overflows\)"),
    ("bytes_overflow", {"a": _entry(dtype="F64", shape=(2**61,), offsets=(0, 2**64 - 1))}, b"", None,
     r"overflows"),
    ("offsets_one", {"a": _entry(offsets=(0,))}, b"\0" * 8, None, r"data_offsets must be two non-negative integers"),
    ("offsets_three", {"a": _entry(offsets=(0, 4, 8))}, b"\0" * 8, None, r"two non-negative integers"),
    ("offsets_negative", {"a": _entry(offsets=(-8, 0))}, b"\0" * 8, None, r"two non-negative integers"),
    ("offsets_float", {"a": _entry(offsets=(0, 8.0))}, b"\0" * 8, None, r"two non-negative integers"),
    ("offsets_not_list", {"a": {**_entry(), "data_offsets": "0-8"}}, b"\0" * 8, None, r"two non-negative integers"),
    ("offsets_unordered", {"a": _entry(shape=(0,), offsets=(8, 0))}, b"\0" * 8, None,
     r"data_offsets \[8,0\] are not ordered"),
    ("size_mismatch", {"a": _entry(shape=(3,), offsets=(0, 8))}, b"\0" * 16, None,
     r"data_offsets \[0,8\] span 8 bytes but shape \[3\] of F32 needs 12"),
    ("outside", {"a": _entry(shape=(4,), offsets=(0, 16))}, b"\0" * 8, None,
     r"data_offsets \[0,16\] lie outside the 8-byte data section"),
    ("outside_huge", {"a": _entry(dtype="U8", shape=(8,), offsets=(2**64 - 16, 2**64 - 8))}, b"\0" * 8, None,
     r"lie outside"),
    ("overlap", {"a": _entry(), "b": _entry(offsets=(4, 12))}, b"\0" * 16, None,
     r"tensors 'a' \[0, 8\) and 'b' \[4, 12\) overlap"),
    ("same_range", {"a": _entry(), "b": _entry()}, b"\0" * 8, None, r"overlap"),
    ("metadata_not_object", {"__metadata__": ["x"]}, b"", None, r"__metadata__ is not an object of strings"),
    ("metadata_not_strings", {"__metadata__": {"k": 1}}, b"", None, r"__metadata__ value of 'k' is not a string"),
    ("metadata_null", {"__metadata__": None}, b"", None, r"__metadata__ is not an object"),
]


@pytest.mark.parametrize("header, data, length, message", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_header_is_refused_with_its_reason(tmp_path, header, data, length, message):
    p = tmp_path / "bad.safetensors"
    if header is None:
        p.write_bytes(b"\x08\0\0\0\0")
    else:
        _write(p, header, data, length)
    with pytest.raises(ValueError, match=message) as err:
        _core.SafetensorsFile.open(p)
    assert str(err.value).startswith(f"{p}: "), "the message names the file"
    with pytest.raises(ValueError, match=message):
        _core.Checkpoint.open(p)


def test_legal_corner_cases(tmp_path):
    p = tmp_path / "ok.safetensors"
    # empty tensors anywhere (even inside another's range), a zero-length data section, holes and
    # trailing bytes after the last tensor, an unpadded header, tensors out of offset order
    _write(p, {"e": _entry(shape=(0, 3), offsets=(0, 0))})
    assert _core.SafetensorsFile.open(p).numpy("e").shape == (0, 3)
    _write(p, {"b": _entry(dtype="U8", shape=(2,), offsets=(4, 6)), "a": _entry(dtype="I16", shape=(1,), offsets=(0, 2)),
               "e": _entry(dtype="F64", shape=(0,), offsets=(5, 5)), "__metadata__": {}}, bytes(range(9)))
    f = _core.SafetensorsFile.open(p)
    assert [t[0] for t in f.tensors()] == ["b", "a", "e"], "header order kept"
    _same(f.numpy("b"), np.array([4, 5], np.uint8))
    _same(f.numpy("a"), np.frombuffer(bytes([0, 1]), "<i2"))
    h = json.dumps({"x": _entry(dtype="F32", shape=(1,), offsets=(0, 4))}).encode() + b" "
    assert (8 + len(h)) % 4 != 0
    p.write_bytes(struct.pack("<Q", len(h)) + h + np.float32(3.5).tobytes())
    f = _core.SafetensorsFile.open(p)
    assert f.numpy("x")[0] == 3.5 and f.read_f32("x")[0] == 3.5  # unaligned data is read correctly
    with pytest.raises(ValueError, match="not a regular file"):
        _core.SafetensorsFile.open(tmp_path)
    with pytest.raises(ValueError, match="cannot open"):
        _core.SafetensorsFile.open(tmp_path / "missing.safetensors")



@pytest.mark.parametrize("shape", [[1] * 65 + [0], [0, 2**62, 2**62]])
def test_shapes_numpy_cannot_hold_name_the_file_and_tensor(tmp_path, shape):
    # Legal in the format (no bytes), refused by numpy (over 64 dimensions; a size it cannot
    # index): a ValueError naming the file and tensor, from the file and from a checkpoint.
    p = _write(tmp_path / "odd.safetensors", {"w": _entry(shape=shape, offsets=(0, 0))})
    for opened in (_core.SafetensorsFile.open(p), _core.Checkpoint.open(p)):
        for read in (opened.numpy, opened.read_f32):
            with pytest.raises(ValueError, match=r"odd\.safetensors: tensor 'w': numpy cannot hold its shape"):
                read("w")


def test_a_header_of_100k_tensors_keeps_order_and_refuses_repeats(tmp_path):
    # The header's keys were once collected by a parse callback whose parser rescanned the object
    # after each entry (O(n^2): this header of 100k empty tensors took minutes, ~0.4 s now).
    p = tmp_path / "many.safetensors"
    names = [f"t{(i * 7919) % 100000}" for i in range(100000)]  # not in sorted order
    _write(p, {name: _entry(dtype="U8", shape=(0,), offsets=(0, 0)) for name in names})
    f = _core.SafetensorsFile.open(p)
    assert [t[0] for t in f.tensors()] == names
    h = b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "b": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}'
    p.write_bytes(struct.pack("<Q", len(h)) + h)
    with pytest.raises(ValueError, match="twice"):
        _core.SafetensorsFile.open(p)

# ---- fuzz: truncations and byte flips -------------------------------------------------------------

def _check_accepted(path: os.PathLike, f) -> None:
    """An accepted file: every tensor lies inside the file and reads back the file's own bytes."""
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    names = [t[0] for t in f.tensors()]
    assert sorted(names) == sorted(k for k in header if k != "__metadata__")
    for name, dtype, shape in f.tensors():
        begin, end = header[name]["data_offsets"]
        assert 0 <= begin <= end <= len(data)
        assert end - begin == math.prod(shape) * ITEMSIZE[dtype]
        view = f.numpy(name)
        assert view.tobytes() == data[begin:end]
        if dtype in FLOATS:
            f.read_f32(name)


def test_fuzz_truncations_and_byte_flips(tmp_path):
    rng = np.random.default_rng(1234)
    tensors = {"w": rng.standard_normal((4, 6)).astype(np.float32), "h": np.arange(5, dtype=np.float16),
               "b": np.arange(3, dtype=np.float32).astype(BF16), "i": np.arange(7, dtype=np.int64),
               "e": np.zeros((0, 2), np.int32), "s": np.array(True)}
    src = tmp_path / "src.safetensors"
    _core.save_safetensors(src, tensors, metadata={"format": "pt"})
    good = src.read_bytes()
    (hlen,) = struct.unpack("<Q", good[:8])
    p = tmp_path / "fuzz.safetensors"
    outcomes = {"ok": 0, "refused": 0}
    for trial in range(500):
        blob = bytearray(good)
        kind = trial % 5
        if kind == 0:  # truncate anywhere
            blob = blob[:int(rng.integers(0, len(good)))]
        elif kind == 1:  # flip bits in the header (JSON) or the length prefix
            for _ in range(int(rng.integers(1, 4))):
                blob[int(rng.integers(0, 8 + hlen))] ^= 1 << int(rng.integers(0, 8))
        elif kind == 2:  # replace header bytes with JSON-significant characters (digits change offsets)
            for _ in range(int(rng.integers(1, 3))):
                blob[int(rng.integers(8, 8 + hlen))] = b'0123456789[]{}",:-e. '[int(rng.integers(0, 21))]
        elif kind == 3:  # flip bits in the data section (still a valid file: the views must show them)
            for _ in range(int(rng.integers(1, 4))):
                blob[int(rng.integers(8 + hlen, len(blob)))] ^= 1 << int(rng.integers(0, 8))
        else:  # random bytes anywhere, then maybe truncate
            for _ in range(int(rng.integers(1, 6))):
                blob[int(rng.integers(0, len(blob)))] = int(rng.integers(0, 256))
            if rng.random() < 0.5:
                blob = blob[:int(rng.integers(0, len(blob) + 1))]
        p.write_bytes(bytes(blob))
        try:
            f = _core.SafetensorsFile.open(p)
        except ValueError as e:
            assert str(e).startswith(f"{p}: ")
            outcomes["refused"] += 1
            continue
        _check_accepted(p, f)
        outcomes["ok"] += 1
    assert outcomes["ok"] >= 100 + 5 and outcomes["refused"] >= 200, outcomes  # both paths exercised
