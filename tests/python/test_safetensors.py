"""ecomllm.safetensors: round trips of every dtype, metadata, empty and 0-d tensors, interoperability
with the reference `safetensors` package in both directions, and atomic writes."""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from ecomllm import safetensors as est
from ecomllm.safetensors import SafetensorsError, load_safetensors, read_metadata, save_safetensors

try:
    import safetensors
    import safetensors.numpy as st_np
except Exception:  # pragma: no cover
    safetensors = st_np = None

try:
    import torch
    import safetensors.torch as st_torch
except Exception:  # pragma: no cover
    torch = st_torch = None

BF16 = np.dtype(ml_dtypes.bfloat16)
ALL_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": BF16,
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
SHAPES = [(), (0,), (3, 0), (1,), (7,), (2, 3, 4), (129, 3)]


def _values(dtype: np.dtype, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        if n >= 2:
            flat[0], flat[1] = info.min, info.max
        return flat.reshape(shape)
    flat = (rng.standard_normal(n) * 100).astype(np.float64)
    out = flat.astype(dtype)
    if n >= 4:
        out[:4] = np.array([np.inf, -np.inf, np.nan, -0.0]).astype(dtype)
    return out.reshape(shape)


def _assert_same(a: np.ndarray, b: np.ndarray, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: {a.shape} != {b.shape}"
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), what


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_round_trip_all_dtypes_and_shapes(tmp_path, mmap):
    tensors = {}
    for name, dt in ALL_DTYPES.items():
        for i, shape in enumerate(SHAPES):
            tensors[f"{name}.{i}"] = _values(dt, shape, seed=i)
    path = tmp_path / "all.safetensors"
    save_safetensors(path, tensors)
    loaded = load_safetensors(path, mmap=mmap)
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        _assert_same(loaded[k], v, k)
        if mmap and loaded[k].size:
            assert not loaded[k].flags.writeable, "memory-mapped tensors are read-only"
    # header: 8-byte aligned data start, dtype names as in the spec
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(blob[8:8 + n])
    for k in tensors:
        assert header[k]["dtype"] == k.split(".")[0]
        assert header[k]["shape"] == list(tensors[k].shape)


def test_metadata_round_trip(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = {"format": "pt", "note": "ünïcode ✓", "empty": "", "json": json.dumps({"a": [1, 2]})}
    save_safetensors(path, {"x": np.arange(4, dtype=np.float32)}, metadata=meta)
    assert read_metadata(path) == meta
    assert "__metadata__" not in load_safetensors(path)
    save_safetensors(path, {"x": np.arange(4, dtype=np.float32)})
    assert read_metadata(path) == {}
    for bad in ({"a": 1}, {1: "a"}, {"a": None}):
        with pytest.raises(SafetensorsError, match="metadata"):
            save_safetensors(tmp_path / "bad.safetensors", {"x": np.zeros(1, np.float32)}, metadata=bad)
    assert not (tmp_path / "bad.safetensors").exists()


def test_empty_file_and_only_empty_tensors(tmp_path):
    p = tmp_path / "none.safetensors"
    save_safetensors(p, {})
    assert load_safetensors(p) == {}
    assert load_safetensors(p, mmap=False) == {}
    p2 = tmp_path / "empties.safetensors"
    save_safetensors(p2, {"a": np.zeros((0,), np.float32), "b": np.zeros((2, 0, 3), np.int64)})
    for mmap in (True, False):
        out = load_safetensors(p2, mmap=mmap)
        assert out["a"].shape == (0,) and out["a"].dtype == np.float32
        assert out["b"].shape == (2, 0, 3) and out["b"].dtype == np.int64


def test_scalars(tmp_path):
    p = tmp_path / "s.safetensors"
    save_safetensors(p, {"f": np.float32(1.5), "i": np.array(-7, np.int16), "b": np.bool_(True),
                         "h": np.array(2.5, BF16)})
    out = load_safetensors(p)
    assert out["f"].shape == () and out["f"] == np.float32(1.5)
    assert out["i"].shape == () and out["i"] == -7 and out["i"].dtype == np.int16
    assert out["b"].shape == () and bool(out["b"])
    assert out["h"].dtype == BF16 and float(out["h"]) == 2.5


def test_non_contiguous_and_big_endian_inputs(tmp_path):
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    be = np.arange(10, dtype=">i4")
    bef = np.linspace(-1, 1, 9).astype(">f8")
    p = tmp_path / "x.safetensors"
    save_safetensors(p, {"view": base[:, ::3], "t": base.T, "be": be, "bef": bef})
    out = load_safetensors(p)
    _assert_same(out["view"], np.ascontiguousarray(base[:, ::3]))
    _assert_same(out["t"], np.ascontiguousarray(base.T))
    _assert_same(out["be"], be.astype("<i4"))
    _assert_same(out["bef"], bef.astype("<f8"))


def test_unsupported_dtypes_and_names(tmp_path):
    p = tmp_path / "bad.safetensors"
    for arr in (np.zeros(2, np.complex64), np.array(["a"]), np.array([object()]), np.zeros(2, np.float128)
                if hasattr(np, "float128") else np.zeros(2, np.complex128)):
        with pytest.raises(SafetensorsError, match="dtype"):
            save_safetensors(p, {"a": arr})
    for name in ("", "__metadata__"):
        with pytest.raises(SafetensorsError, match="name"):
            save_safetensors(p, {name: np.zeros(1, np.float32)})
    assert not p.exists()
    assert list(tmp_path.iterdir()) == []


# ---- atomic writes -------------------------------------------------------------------------------

def test_atomic_write_leaves_no_temp_file(tmp_path):
    p = tmp_path / "w.safetensors"
    for i in range(3):  # create, then overwrite twice
        save_safetensors(p, {"x": np.full(1000, i, np.int32)})
        assert [f.name for f in tmp_path.iterdir()] == ["w.safetensors"]
        assert load_safetensors(p)["x"][0] == i
    save_safetensors(str(p), {"y": np.ones(2, np.float32)})  # str paths work too
    assert [f.name for f in tmp_path.iterdir()] == ["w.safetensors"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    p = tmp_path / "w.safetensors"
    save_safetensors(p, {"x": np.arange(5, dtype=np.int64)})
    before = p.read_bytes()

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(est.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        save_safetensors(p, {"x": np.zeros(100, np.float32)})
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["w.safetensors"]

    class Interrupt(BaseException):
        pass

    real_fsync = os.fsync

    def interrupted(fd):
        real_fsync(fd)
        raise Interrupt()

    monkeypatch.setattr(est.os, "fsync", interrupted)
    with pytest.raises(Interrupt):
        save_safetensors(p, {"x": np.zeros(100, np.float32)})
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["w.safetensors"]


def test_nf4_save_is_atomic(tmp_path):
    from ecomllm.quant import NF4Tensor

    t = NF4Tensor.quantize(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32))
    p = tmp_path / "nf4.safetensors"
    t.save_safetensors(p)
    assert [f.name for f in tmp_path.iterdir()] == ["nf4.safetensors"]
    np.testing.assert_array_equal(NF4Tensor.load_safetensors(p).dequantize(), t.dequantize())


# ---- the reference implementation ---------------------------------------------------------------

NUMPY_DTYPES = [k for k in ALL_DTYPES if k != "BF16"]


@pytest.mark.skipif(st_np is None, reason="the safetensors package is not importable")
def test_reference_reads_our_files(tmp_path):
    tensors = {f"{k}.{i}": _values(ALL_DTYPES[k], s, seed=i) for k in NUMPY_DTYPES for i, s in enumerate(SHAPES)}
    p = tmp_path / "ours.safetensors"
    save_safetensors(p, tensors, metadata={"who": "ecomllm"})
    loaded = st_np.load_file(str(p))
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        _assert_same(loaded[k], v, k)
    with safetensors.safe_open(str(p), framework="np") as f:
        assert f.metadata() == {"who": "ecomllm"}
        assert set(f.keys()) == set(tensors)


@pytest.mark.skipif(st_np is None, reason="the safetensors package is not importable")
def test_we_read_reference_files(tmp_path):
    tensors = {f"{k}.{i}": _values(ALL_DTYPES[k], s, seed=i + 1) for k in NUMPY_DTYPES for i, s in enumerate(SHAPES)}
    p = tmp_path / "ref.safetensors"
    st_np.save_file(tensors, str(p), metadata={"format": "np", "x": "y"})
    for mmap in (True, False):
        loaded = load_safetensors(p, mmap=mmap)
        assert set(loaded) == set(tensors)
        for k, v in tensors.items():
            _assert_same(loaded[k], v, k)
    assert read_metadata(p) == {"format": "np", "x": "y"}


@pytest.mark.skipif(st_torch is None, reason="torch / safetensors.torch is not importable")
def test_bf16_interop_with_reference(tmp_path):
    rng = np.random.default_rng(3)
    vals = rng.standard_normal((5, 7)).astype(np.float32)
    t = torch.from_numpy(vals).to(torch.bfloat16)
    p = tmp_path / "torch.safetensors"
    st_torch.save_file({"w": t, "s": torch.tensor(1.25, dtype=torch.bfloat16)}, str(p))
    out = load_safetensors(p)
    assert out["w"].dtype == BF16 and out["w"].shape == (5, 7)
    np.testing.assert_array_equal(out["w"].view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))
    assert out["s"].shape == () and float(out["s"]) == 1.25
    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, {"w": vals.astype(BF16)})
    back = st_torch.load_file(str(ours))["w"]
    assert back.dtype == torch.bfloat16
    np.testing.assert_array_equal(back.view(torch.int16).numpy().view(np.uint16),
                                  vals.astype(BF16).view(np.uint16))
