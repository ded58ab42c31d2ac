"""Independent numpy reference of the NF4 / double-quantization rules (bitsandbytes 0.50, CPU path).

Nothing here calls ``ecomllm._core``: the rules are re-implemented from their written description
so that the tests compare two independent implementations. The only thing taken from outside is
the 8-bit dynamic map, which comes from bitsandbytes' ``create_dynamic_map()`` when bitsandbytes
imports (a separate test checks that ``_core.dynamic_map_8bit()`` is bit-identical to it).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

F32 = np.float32

# bitsandbytes get_4bit_type('nf4'), as float32 literals.
NF4_CODE = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=F32,
)
# Midpoints in fp32 arithmetic: float32((c[i] + c[i+1]) / 2).
NF4_MID = ((NF4_CODE[:-1] + NF4_CODE[1:]) / F32(2)).astype(F32)
NF4_ZERO_CODE = 7
NESTED_BLOCKSIZE = 256
_TINY = F32(1e-38)


def dynamic_map_8bit() -> np.ndarray:
    """bitsandbytes' create_dynamic_map() (float32[256]); _core's copy only if bnb is missing."""
    try:
        from bitsandbytes.functional import create_dynamic_map

        return create_dynamic_map().numpy().astype(F32)
    except Exception:  # pragma: no cover - bitsandbytes not importable
        from ecomllm import _core

        return np.asarray(_core.dynamic_map_8bit(), dtype=F32)


_CODE8 = None
_LUT8 = None


def code8() -> np.ndarray:
    global _CODE8
    if _CODE8 is None:
        _CODE8 = dynamic_map_8bit()
    return _CODE8


def _lut8() -> np.ndarray:
    """65536-entry table: lut[idx] = searchsorted(mid8, float32(float32(idx) / 65535 * 2 - 1), 'left')."""
    global _LUT8
    if _LUT8 is None:
        c = code8()
        mid8 = ((c[:-1] + c[1:]) / F32(2)).astype(F32)
        idx = np.arange(65536, dtype=F32)
        centre = ((idx / F32(65535)) * F32(2) - F32(1)).astype(F32)
        _LUT8 = np.searchsorted(mid8, centre, side="left").astype(np.uint8)
    return _LUT8


def to_f32(x) -> np.ndarray:
    """Exact conversion of a float32 / float16 / bfloat16 array to a flat float32 array."""
    x = np.asarray(x)
    assert x.dtype in (np.float32, np.float16, np.dtype(ml_dtypes.bfloat16)), x.dtype
    return x.astype(F32).reshape(-1)


def nf4_codes(x, blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8[n], absmax float32[nblocks]) by the stated rules."""
    flat = to_f32(x)
    n = flat.size
    bs = int(blocksize)
    full = n // bs
    nblocks = -(-n // bs)
    absmax = np.empty(nblocks, dtype=F32)
    codes = np.empty(n, dtype=np.uint8)
    with np.errstate(over="ignore", under="ignore"):
        if full:
            a = flat[: full * bs].reshape(full, bs)
            am = np.abs(a).max(axis=1).astype(F32)
            absmax[:full] = am  # stored as is (may be 0 or subnormal)
            inv = (F32(1) / np.maximum(am, _TINY)).astype(F32)  # reciprocal, then multiply
            scaled = np.clip(a * inv[:, None], F32(-1), F32(1)).astype(F32)
            codes[: full * bs] = np.searchsorted(NF4_MID, scaled.reshape(-1), side="left")
        if n % bs:
            t = flat[full * bs:]
            am = np.maximum(np.abs(t).max(), _TINY).astype(F32)  # stored clamped
            absmax[full] = am
            scaled = np.clip((t / am).astype(F32), F32(-1), F32(1)).astype(F32)  # division
            codes[full * bs:] = np.searchsorted(NF4_MID, scaled, side="left")
    return codes, absmax


def pack(codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes, dtype=np.uint8)
    if c.size % 2:
        c = np.concatenate([c, np.array([NF4_ZERO_CODE], dtype=np.uint8)])
    return ((c[0::2] << 4) | c[1::2]).astype(np.uint8)


def unpack(packed: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    c = np.empty(2 * p.size, dtype=np.uint8)
    c[0::2] = p >> 4
    c[1::2] = p & 0x0F
    return c[:n]


def nf4_quantize(x, blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8[(n+1)//2], absmax float32[nblocks])."""
    codes, absmax = nf4_codes(x, blocksize)
    return pack(codes), absmax


def nf4_dequantize(packed: np.ndarray, absmax: np.ndarray, n: int, blocksize: int) -> np.ndarray:
    """out[i] = code[q_i] * absmax[i // bs] in fp32 (flat)."""
    q = unpack(packed, n)
    scale = np.asarray(absmax, dtype=F32)[np.arange(n) // int(blocksize)]
    with np.errstate(over="ignore", under="ignore"):
        return (NF4_CODE[q] * scale).astype(F32)


def absmax_offset(absmax: np.ndarray) -> np.float32:
    """Double-quantization offset: the mean of absmax computed in float64 (exact sum), rounded to fp32."""
    a = np.asarray(absmax, dtype=np.float64)
    return F32(math.fsum(a.tolist()) / a.size)


def quantize_blockwise_8bit(v: np.ndarray, blocksize: int, code=None) -> tuple[np.ndarray, np.ndarray]:
    """bitsandbytes' CPU 8-bit blockwise quantization: (q uint8[n], absmax float32[nblocks])."""
    v = np.asarray(v, dtype=F32).reshape(-1)
    lut = _lut8() if code is None else None
    if code is not None:  # custom code: build its table
        c = np.asarray(code, dtype=F32)
        mid = ((c[:-1] + c[1:]) / F32(2)).astype(F32)
        centre = ((np.arange(65536, dtype=F32) / F32(65535)) * F32(2) - F32(1)).astype(F32)
        lut = np.searchsorted(mid, centre, side="left").astype(np.uint8)
    n = v.size
    bs = int(blocksize)
    nblocks = -(-n // bs)
    q = np.zeros(n, dtype=np.uint8)
    absmax = np.zeros(nblocks, dtype=F32)
    with np.errstate(over="ignore", under="ignore"):
        for b in range(nblocks):
            blk = v[b * bs:(b + 1) * bs]
            am = F32(np.abs(blk).max())
            absmax[b] = am
            if am == 0:
                continue  # all codes 0
            inv = F32(F32(1) / am)
            s = np.clip((blk * inv).astype(F32), F32(-1), F32(1)).astype(F32)
            pos = ((((s + F32(1)) * F32(0.5)).astype(F32) * F32(65535)).astype(F32) + F32(0.5)).astype(F32)
            q[b * bs:(b + 1) * bs] = lut[np.floor(pos).astype(np.int64)]
    return q, absmax


def double_quantize(absmax: np.ndarray, offset=None):
    """(offset fp32, qabsmax uint8[nb], nested float32[ceil(nb/256)])."""
    absmax = np.asarray(absmax, dtype=F32)
    off = absmax_offset(absmax) if offset is None else F32(offset)
    centred = (absmax - off).astype(F32)
    q, nested = quantize_blockwise_8bit(centred, NESTED_BLOCKSIZE)
    return off, q, nested


def double_dequantize(qabsmax: np.ndarray, nested: np.ndarray, offset) -> np.ndarray:
    """absmax_i = float32(float32(code8[q_i] * nested[i // 256]) + offset)."""
    q = np.asarray(qabsmax, dtype=np.uint8)
    idx = np.arange(q.size) // NESTED_BLOCKSIZE
    with np.errstate(over="ignore"):
        scaled = (code8()[q] * np.asarray(nested, dtype=F32)[idx]).astype(F32)
        return (scaled + F32(offset)).astype(F32)


# ---- comparison helpers ------------------------------------------------------------------------

def assert_bits_equal(actual, expected, what: str = "") -> None:
    """Bit-identical arrays (same dtype, same shape, same bytes; -0.0 != 0.0, NaN payloads count)."""
    a = np.asarray(actual)
    e = np.asarray(expected)
    assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} != {e.dtype}"
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    if a.dtype.itemsize == 4 and a.dtype.kind == "f":
        av, ev = a.view(np.uint32), e.view(np.uint32)
    elif a.dtype.itemsize == 2 and a.dtype.kind in "fV":
        av, ev = a.view(np.uint16), e.view(np.uint16)
    else:
        av, ev = a, e
    bad = np.flatnonzero(av.reshape(-1) != ev.reshape(-1))
    if bad.size:
        i = int(bad[0])
        raise AssertionError(
            f"{what}: {bad.size} of {a.size} elements differ; first at flat index {i}: "
            f"{a.reshape(-1)[i]!r} != {e.reshape(-1)[i]!r}"
        )


def rel_err(actual, expected) -> float:
    """max|actual - expected| / max|expected| (0/0 counts as 0)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    num = float(np.max(np.abs(a - e))) if a.size else 0.0
    den = float(np.max(np.abs(e))) if e.size else 0.0
    if den == 0.0:
        return num
    return num / den
