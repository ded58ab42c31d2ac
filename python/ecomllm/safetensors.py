"""Read and write the safetensors format with numpy only (no torch).

Format: 8-byte little-endian header length ``L``, then ``L`` bytes of UTF-8 JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
byte buffer after the header) plus an optional ``"__metadata__"`` dict of strings, then the
buffer. Loading validates everything a hostile file could get wrong (sizes, offsets, overlaps,
dtypes) and raises :class:`SafetensorsError` (a ``ValueError``); saving is atomic (temporary
file + rename), so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np

__all__ = ["SafetensorsError", "load_safetensors", "save_safetensors", "read_metadata"]

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class SafetensorsError(ValueError):
    """A safetensors file or tensor that cannot be read or written as asked."""


def _dtype_name(dt: np.dtype) -> str:
    dt = np.dtype(dt)
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    name = _NAMES.get(dt)
    if name is None:
        raise SafetensorsError(f"dtype {dt} cannot be stored in safetensors")
    return name


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> numpy array) to ``path`` atomically.

    Arrays are written C-contiguous and little-endian. ``metadata`` values must be strings.
    """
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError("metadata keys and values must be strings")
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name in sorted(tensors):
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise SafetensorsError(f"invalid tensor name {name!r}")
        arr = np.asarray(tensors[name])
        dtype_name = _dtype_name(arr.dtype)
        data = np.ascontiguousarray(arr).astype(_DTYPES[dtype_name], copy=False).tobytes()
        header[name] = {"dtype": dtype_name, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # align the buffer to 8 bytes
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            for blob in blobs:
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read_header(f, file_size: int, path) -> tuple[dict, int]:
    if file_size < 8:
        raise SafetensorsError(f"{path}: file is {file_size} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > _MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise SafetensorsError(f"{path}: header length {header_len} does not fit the file ({file_size} bytes)")
    raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, integers over 4300 digits, deep nesting
        raise SafetensorsError(f"{path}: header is not valid UTF-8 JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header must be a JSON object")
    return header, 8 + header_len


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file ({} if absent)."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, os.fstat(f.fileno()).st_size, path)
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise SafetensorsError(f"{path}: __metadata__ must be an object")
    return meta


def load_safetensors(path: str | os.PathLike, *, mmap: bool = True) -> dict[str, np.ndarray]:
    """Load every tensor of a safetensors file as numpy arrays (read-only memory maps by default).

    Raises SafetensorsError on a truncated or malformed file: bad header length, invalid JSON,
    unknown dtype, a shape that disagrees with its byte range, ranges outside the buffer or
    overlapping each other.
    """
    path = Path(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        header, data_start = _read_header(f, file_size, path)
    buffer_size = file_size - data_start
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise SafetensorsError(f"{path}: tensor {name!r} lacks dtype/shape/data_offsets")
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if (not isinstance(shape, list) or not all(_is_int(d) and 0 <= d < 2**62 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) for o in offsets)):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed shape or data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_size:
            raise SafetensorsError(f"{path}: tensor {name!r} bytes [{begin}, {end}) lie outside the "
                                   f"{buffer_size}-byte buffer (truncated file?)")
        if math.prod(shape) * dtype.itemsize != end - begin:  # exact Python ints: no overflow
            raise SafetensorsError(f"{path}: tensor {name!r} shape {shape} x {dtype.itemsize} bytes does not "
                                   f"match its {end - begin}-byte range")
        entries.append((begin, end, name, dtype, shape))
    entries.sort()
    for (b0, e0, n0, *_), (b1, e1, n1, *_) in zip(entries, entries[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{path}: tensors {n0!r} and {n1!r} overlap")
    out: dict[str, np.ndarray] = {}
    if mmap and buffer_size > 0:
        buf = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(buffer_size,))
    else:
        with open(path, "rb") as f:
            f.seek(data_start)
            buf = np.frombuffer(f.read(), dtype=np.uint8)
    for begin, end, name, dtype, shape in entries:
        try:
            out[name] = buf[begin:end].view(dtype).reshape(shape)
        except ValueError as e:  # numpy's own limits: more than 64 dimensions, "array is too big"
            raise SafetensorsError(f"{path}: tensor {name!r} shape {shape}: {e}") from None
    return out
