"""NF4 4-bit quantization (QLoRA), byte-compatible with bitsandbytes.

:class:`NF4Tensor` holds a weight in bitsandbytes' blockwise NF4 layout -- packed 4-bit codes (first
element in the high nibble), one fp32 absmax per block of ``blocksize`` elements, optionally
double-quantized to 8 bits -- and multiplies with it through fused C++ kernels that never
expand the whole weight::

    w = NF4Tensor.quantize(weight)            # weight: [N, K] float32 / float16 / bfloat16
    y = w.matmul(x)                           # x: [..., K] -> [..., N]   (forward)
    dx = w.matmul_t(dy)                       # dy: [..., N] -> [..., K]  (backward w.r.t. x)
    w.save_safetensors("layer.safetensors")   # bitsandbytes state-dict keys
    w2 = NF4Tensor.load_safetensors("layer.safetensors")

The state dict uses bitsandbytes' keys (``weight``, ``weight.absmax``, ``weight.quant_map``,
``weight.nested_absmax``, ``weight.nested_quant_map``, ``weight.quant_state.bitsandbytes__nf4``),
so a Linear4bit saved by bitsandbytes loads here and ours loads into bitsandbytes.

One deliberate difference: the double-quantization offset is the exactly rounded mean of the
absmax vector; bitsandbytes uses torch's float32 mean, which can differ by an ulp. Both are
stored in the file, so loading is exact either way.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Mapping

import ml_dtypes
import numpy as np

from . import _core
from ._errors import naming_file
from .safetensors import load_safetensors, save_safetensors

__all__ = ["NF4Tensor", "NF4StateError", "NF4_CODEBOOK", "VALID_BLOCKSIZES", "set_decoding_policy",
           "decoding_policy"]

NF4_CODEBOOK: np.ndarray = _core.nf4_codebook()
VALID_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
NESTED_BLOCKSIZE = 256
_QUANT_STATE_KEY = "quant_state.bitsandbytes__nf4"
_SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


# When an NF4Tensor takes the decode layout (NF4Tensor.prepare_decoding): "auto" -- at its first
# matmul of 1-16 rows of fp32/bf16 x (token-by-token decoding), with the packed codes released,
# where this CPU runs the layout's kernels (and its 64-row padding adds at most 1/8 to the rows);
# "manual" -- only when prepare_decoding is called.
_DECODING_POLICIES = ("auto", "manual")
_decoding_policy = "auto"
_AUTO_DECODING_MAX_ROWS = 16  # the layout's row kernel takes up to this many rows (kDecodeMaxRows)


def set_decoding_policy(policy: str) -> None:
    """``"auto"`` (default): an :class:`NF4Tensor` lays its codes out for decoding at its first
    matmul of 1-16 rows of x, as bitsandbytes repacks its weights at their first CPU inference
    call: ``prepare_decoding(keep_codes=False)``, where a decode kernel runs (AVX-512 VBMI + VNNI
    at the ``avx512`` level, or the ``avx2`` level; elsewhere nothing changes) and the layout's padding of the rows to a multiple of 64 adds at most 1/8.
    ``"manual"``: only an explicit :meth:`NF4Tensor.prepare_decoding` does. Tensors that already
    had their first such matmul, or an explicit ``prepare_decoding``, keep what they have."""
    global _decoding_policy
    if policy not in _DECODING_POLICIES:
        raise ValueError(f"decoding policy must be one of {_DECODING_POLICIES}, got {policy!r}")
    _decoding_policy = policy


def decoding_policy() -> str:
    """The policy set by :func:`set_decoding_policy` (``"auto"`` unless changed)."""
    return _decoding_policy


class NF4StateError(ValueError):
    """A state dict or file that does not describe a valid NF4 tensor."""


@dataclass(frozen=True)
class _DoubleQuant:
    qabsmax: np.ndarray        # uint8 [nblocks]
    nested_absmax: np.ndarray  # float32 [ceil(nblocks / 256)]
    nested_code: np.ndarray    # float32 [256]
    offset: float


def _is_finite_number(v) -> bool:
    """A JSON number (not bool) that is finite as a float (10**400 is not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _dtype_name(arr: np.ndarray) -> str:
    if arr.dtype == np.float32:
        return "float32"
    if arr.dtype == np.float16:
        return "float16"
    if arr.dtype == ml_dtypes.bfloat16:
        return "bfloat16"
    raise TypeError(f"NF4 quantization takes float32, float16 or bfloat16 arrays, got {arr.dtype}")


def _activation(x) -> tuple[np.ndarray, bool]:
    """x as a contiguous float32 array, or bf16 bit patterns (uint16) with the flag set."""
    x = np.asarray(x)
    if x.dtype == ml_dtypes.bfloat16:
        return np.ascontiguousarray(x).view(np.uint16), True
    if x.dtype != np.float32:
        raise TypeError(f"expected float32 or bfloat16 activations, got {x.dtype}")
    return np.ascontiguousarray(x), False


class NF4Tensor:
    """A weight quantized to NF4 in bitsandbytes' layout, with fused matmul kernels.

    Build one with :meth:`quantize`, :meth:`from_state_dict` or :meth:`load_safetensors`.
    Matmuls need a 2-D weight ``[N, K]`` (``nn.Linear`` layout: out_features x in_features).
    """

    def __init__(self, packed: np.ndarray, absmax: np.ndarray | None, shape: tuple[int, ...], blocksize: int,
                 dtype: str = "float32", quant_map: np.ndarray | None = None,
                 double_quant: _DoubleQuant | None = None):
        # The packed codes are held by the core alone, which can release them (prepare_decoding).
        packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
        self._absmax = None if absmax is None else np.ascontiguousarray(absmax, dtype=np.float32)
        self._shape = tuple(int(d) for d in shape)
        self._blocksize = int(blocksize)
        self._dtype = dtype
        self._quant_map = NF4_CODEBOOK if quant_map is None else np.ascontiguousarray(quant_map, dtype=np.float32)
        self._dq = double_quant
        self._auto_decoding = True  # until the first matmul of few rows or prepare_decoding decides
        if dtype not in _SUPPORTED_DTYPES:
            raise NF4StateError(f"unsupported original dtype {dtype!r}; expected one of {_SUPPORTED_DTYPES}")
        if not self._shape or any(d <= 0 for d in self._shape):
            raise NF4StateError(f"shape must have positive dimensions, got {self._shape}")
        numel = int(np.prod(self._shape, dtype=np.int64))
        # The core validates sizes, dtypes and finiteness; a 1-D tensor is viewed as [1, n].
        rows, cols = (self._shape[0], numel // self._shape[0]) if len(self._shape) >= 2 else (1, numel)
        if double_quant is None:
            self._core = _core.NF4Matrix(packed, rows, cols, self._blocksize, self._quant_map,
                                         absmax=self._absmax)
        else:
            self._core = _core.NF4Matrix(packed, rows, cols, self._blocksize, self._quant_map,
                                         qabsmax=double_quant.qabsmax, nested_absmax=double_quant.nested_absmax,
                                         nested_code=double_quant.nested_code, offset=double_quant.offset)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def quantize(cls, array, blocksize: int = 64, double_quant: bool = True) -> "NF4Tensor":
        """Quantize a float32 / float16 / bfloat16 array of any shape (bitsandbytes' rules).

        ``double_quant=True`` stores the block scales in 8 bits (about 4.127 bits per weight in
        all), like ``bnb_4bit_use_double_quant=True``. Raises ValueError for non-finite values,
        a blocksize outside 32...4096 (powers of two) or an empty array.
        """
        arr = np.asarray(array)
        dtype = _dtype_name(arr)
        if blocksize not in VALID_BLOCKSIZES:
            raise ValueError(f"blocksize must be one of {VALID_BLOCKSIZES}, got {blocksize}")
        flat = np.ascontiguousarray(arr)
        if dtype == "bfloat16":
            packed, absmax = _core.nf4_quantize(flat.view(np.uint16), blocksize, bf16_bits=True)
        else:
            packed, absmax = _core.nf4_quantize(flat, blocksize)
        dq = None
        if double_quant:
            offset = _core.absmax_mean(absmax)
            qabsmax, nested = _core.absmax_double_quantize(absmax, offset)
            dq = _DoubleQuant(qabsmax, nested, _core.dynamic_map_8bit(), float(offset))
            absmax = None
        return cls(packed, absmax, arr.shape, blocksize, dtype, None, dq)

    # ---- properties ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def blocksize(self) -> int:
        return self._blocksize

    @property
    def dtype(self) -> str:
        """The dtype of the array that was quantized ("float32", "float16" or "bfloat16")."""
        return self._dtype

    @property
    def double_quant(self) -> bool:
        return self._dq is not None

    @property
    def numel(self) -> int:
        return int(np.prod(self._shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of quantized storage: packed codes + block scales (+ nested scales and maps).

        This is the size of the bitsandbytes state (:meth:`state_dict`), whether or not the packed
        codes are held now; :attr:`memory_nbytes` counts what is held, decode layout included.
        """
        n = (self.numel + 1) // 2 + self._quant_map.nbytes
        if self._dq is None:
            return n + self._absmax.nbytes
        return n + self._dq.qabsmax.nbytes + self._dq.nested_absmax.nbytes + self._dq.nested_code.nbytes

    @property
    def memory_nbytes(self) -> int:
        """Bytes held in memory now: :attr:`nbytes`, less the packed codes once released by
        ``prepare_decoding(keep_codes=False)``, plus :attr:`decoding_nbytes`. (Released codes are
        freed once nothing else refers to their array: :meth:`from_state_dict` shares the
        caller's arrays, and :meth:`state_dict` returns the held one, read-only.)"""
        released = 0 if self.holds_codes else (self.numel + 1) // 2
        return self.nbytes - released + self.decoding_nbytes

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per element, not counting the fixed code books."""
        maps = self._quant_map.nbytes + (self._dq.nested_code.nbytes if self._dq else 0)
        return 8.0 * (self.nbytes - maps) / self.numel

    def __repr__(self) -> str:
        dq = ", double_quant" if self._dq else ""
        return f"NF4Tensor(shape={self._shape}, blocksize={self._blocksize}, dtype={self._dtype}{dq})"

    # ---- numerics ------------------------------------------------------------------------------
    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """The weight as a dense array of the original shape (computed in fp32, then cast)."""
        out = self._core.dequantize().reshape(self._shape)
        return out if np.dtype(dtype) == np.float32 else out.astype(dtype)

    def block_scales(self) -> np.ndarray:
        """fp32 absmax of every block (double quantization undone)."""
        return self._core.block_scales()

    def _require_2d(self) -> None:
        if len(self._shape) != 2:
            raise ValueError(f"matmul needs a 2-D weight [N, K], this one has shape {self._shape}")

    def matmul(self, x, bias: np.ndarray | None = None, activations: str = "fp32") -> np.ndarray:
        """``x[..., K] @ W^T (+ bias[N]) -> [..., N]`` in fp32; x float32 or bfloat16.

        ``activations="int16"`` runs the decoding kernel that rounds x to int16 per 64 elements
        and the 16 code values to multiples of 2^-14, then sums exactly in integers: ~1e-4
        relative difference from the fp32 kernel and several times its speed at one row of x
        on AVX2. Needs ``in_features`` and the blocksize to be multiples of 64
        (:attr:`supports_int16_activations`); meant for a few rows of x (each row is one pass
        over W). Rows holding inf/NaN, or a 64-element chunk whose max |x| is below 2^-90 but
        not 0, fall back to the fp32 kernel.

        Where a decode kernel runs (see :meth:`prepare_decoding`) the first fp32 call with 1-16
        rows of x lays the codes out for decoding (``prepare_decoding(keep_codes=False)``: exact to ~1e-6, about
        twice as fast for a few rows, ~4.6 bits per weight held instead of ~4.13), unless
        :func:`set_decoding_policy` is ``"manual"`` or :meth:`prepare_decoding` was called. On a
        weight so laid out, ``activations="int16"`` reads the layout too: with AVX-512, its
        product tables with 16-bit products instead of 24-bit ones (~6e-5, as the int16 kernel;
        4 lookups per 64 bytes instead of 6, ~1.3x the exact layout's speed where compute binds);
        with AVX2, the exact product (that kernel has no 16-bit variant).
        """
        self._require_2d()
        if activations not in ("fp32", "int16"):
            raise ValueError(f"activations must be 'fp32' or 'int16', got {activations!r}")
        xa, is_bf16 = _activation(x)
        b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        if self._auto_decoding and activations == "fp32" and _decoding_policy == "auto" and xa.ndim >= 1 \
                and xa.shape[-1] == self._shape[1] and 1 <= xa.size // self._shape[1] <= _AUTO_DECODING_MAX_ROWS:
            self._auto_decoding = False
            # The layout pads rows to a multiple of 64: not for weights it would inflate by over 1/8.
            rows = self._shape[0]
            if -(-rows // 64) * 64 * 8 <= rows * 9:
                self._core.prepare_decoding(True, False)  # False where this CPU or shape has no layout
        return self._core.matmul(xa, b, bf16_bits=is_bf16, int16_activations=activations == "int16")

    def prepare_decoding(self, enabled: bool = True, *, keep_codes: bool = True) -> bool:
        """Lay the codes out for fast exact token-by-token decoding.

        With the decode layout, :meth:`matmul` with up to 16 rows of x (4 with AVX2, whose GEMM
        is faster beyond) runs a product-table kernel: x becomes tables of ``code[c] * x[k]`` as 24-bit integers (exact to ~1e-6 of the
        fp32 kernel). With AVX-512 VBMI + VNNI each 64 bytes of codes cost 6 byte lookups and 6
        integer dot products; on Zen 4 it streams the weights at 1.06-1.3x bitsandbytes' bf16
        kernel and 0.7-0.96 of the machine's read bandwidth, about 1.5x the kernel over
        bitsandbytes' layout. With AVX2 (in-lane ``vpshufb`` lookups, four 6-bit digits per
        product, sums in 16-bit lanes) it is ~1.8x the default AVX2 kernel on the same Zen 4, and
        gives the same bits as the AVX-512 one (``benchmarks/README.md``). The layout holds the codes and
        the block scales (:attr:`decoding_nbytes`): with AVX-512 VBMI and double quantization
        their 8-bit codes, ~4.13 bits per weight like bitsandbytes' state (the kernel undoes
        the double quantization as :meth:`dequantize` does: the same bits as fp32 scales, 8%
        fewer bytes to stream, ~5% more work per byte); otherwise fp32 scales, 4.5 bits.

        ``keep_codes=True`` (default) keeps bitsandbytes' packed codes too: ~4.13 + 4.13 bits per
        weight (4.13 + 4.5 with fp32 scales), and every other path runs as before.
        ``keep_codes=False`` releases them, since the layout holds the same codes (bitsandbytes'
        CPU inference path likewise repacks in place): ~4.25 bits per weight held in all with
        double quantization and AVX-512 VBMI, ~4.6 with the AVX2 layout, ~5.0 without double
        quantization (:attr:`memory_nbytes`). Matmuls of more rows then decode their weight panels straight
        from the layout (bit-identical to bitsandbytes' layout, and faster); the paths that read
        bitsandbytes' layout (:meth:`matmul_t`, :meth:`dequantize`, :meth:`state_dict`, int16
        activations on rows the tables refuse, matmuls on AMX tiles, 1-3 rows the table kernel
        refuses) restore a transient copy of the codes per call (~1-2 ms per 4096 x 4096
        weight), so it suits serving more than training. Calling again with
        ``keep_codes=True`` brings the codes back.

        Needs a 2-D weight with ``in_features`` and the blocksize multiples of 64, and a decode
        kernel at the active SIMD level: AVX-512 VBMI and VNNI at ``avx512``, or ``avx2`` (none
        at ``scalar``, nor at ``avx512`` without VBMI/VNNI, where the default AVX-512 kernel
        should be the faster). The layout's byte order is the kernel's: called again after
        :func:`ecomllm.set_simd_level` moved to the other kernel, it rebuilds the layout.
        Returns whether the layout is in use (False, nothing allocated and nothing released,
        where those are missing);
        ``enabled=False`` drops it, restoring released codes first. Rows of x holding inf/NaN, or
        a 64-element segment whose max |x| is below 2^-100 but not 0, take the default kernel.
        State dicts and files are unaffected (bitsandbytes' layout, byte for byte).
        """
        self._require_2d()
        self._auto_decoding = False  # the caller decides from now on
        return bool(self._core.prepare_decoding(bool(enabled), bool(keep_codes)))

    @property
    def holds_codes(self) -> bool:
        """Whether bitsandbytes' packed codes are held (False after ``prepare_decoding(keep_codes=False)``)."""
        return bool(self._core.holds_codes)

    @property
    def decoding_nbytes(self) -> int:
        """Bytes held by the decode layout of :meth:`prepare_decoding` (0 when there is none)."""
        return int(self._core.decoding_nbytes)

    @property
    def supports_int16_activations(self) -> bool:
        """Whether :meth:`matmul` accepts ``activations="int16"`` for this weight."""
        self._require_2d()
        return bool(self._core.supports_int16_activations)

    def matmul_t(self, dy) -> np.ndarray:
        """``dy[..., N] @ W -> [..., K]`` in fp32 (the input gradient of :meth:`matmul`)."""
        self._require_2d()
        dya, is_bf16 = _activation(dy)
        return self._core.matmul_t(dya, bf16_bits=is_bf16)

    __matmul__ = None  # W @ x is ambiguous about the transpose: use matmul / matmul_t explicitly

    # ---- bitsandbytes state dict ---------------------------------------------------------------
    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """bitsandbytes ``Linear4bit`` state-dict entries for this weight, keys ``{prefix}weight...``."""
        w = prefix + "weight"
        # The held array (read-only: writing to it would set the codes apart from the decode
        # layout's copy), or one restored from the layout.
        packed = self._core.packed_codes().reshape(-1, 1)
        packed.flags.writeable = False
        sd = {
            w: packed,
            f"{w}.quant_map": self._quant_map,
        }
        meta = {"quant_type": "nf4", "blocksize": self._blocksize, "dtype": self._dtype, "shape": list(self._shape)}
        if self._dq is None:
            sd[f"{w}.absmax"] = self._absmax
        else:
            sd[f"{w}.absmax"] = self._dq.qabsmax
            sd[f"{w}.nested_absmax"] = self._dq.nested_absmax
            sd[f"{w}.nested_quant_map"] = self._dq.nested_code
            meta.update({"nested_blocksize": NESTED_BLOCKSIZE, "nested_dtype": "float32",
                         "nested_offset": self._dq.offset})
        sd[f"{w}.{_QUANT_STATE_KEY}"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8).copy()
        return sd

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray], prefix: str = "") -> "NF4Tensor":
        """Rebuild from bitsandbytes-layout entries (numpy arrays, or anything np.asarray takes)."""
        w = prefix + "weight"

        def get(key: str, required: bool = True):
            if key not in state:
                if required:
                    raise NF4StateError(f"state dict lacks {key!r}")
                return None
            return np.asarray(state[key])

        qs_keys = [k for k in state if k.startswith(w + ".quant_state.bitsandbytes__")]
        if len(qs_keys) != 1:
            raise NF4StateError(f"expected one '{w}.quant_state.bitsandbytes__*' entry, found {len(qs_keys)}")
        if not qs_keys[0].endswith("__nf4"):
            raise NF4StateError(f"only nf4 is supported, found {qs_keys[0]!r}")
        raw = get(qs_keys[0])
        if raw.dtype != np.uint8:  # bitsandbytes packs the JSON as uint8 bytes; a cast would hide corruption
            raise NF4StateError(f"{qs_keys[0]}: expected uint8 bytes of JSON, got {raw.dtype}")
        try:
            meta = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
        except (TypeError, ValueError, RecursionError) as e:  # ValueError covers bad UTF-8 and JSON
            raise NF4StateError(f"{qs_keys[0]}: unreadable quant state ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or "blocksize" not in meta or "shape" not in meta:
            raise NF4StateError(f"{qs_keys[0]}: quant state must be a JSON object with blocksize and shape")
        blocksize, shape = meta["blocksize"], meta["shape"]
        if not _is_int(blocksize):
            raise NF4StateError(f"blocksize must be an integer, got {blocksize!r}")
        if (not isinstance(shape, list) or not shape or not all(_is_int(d) and d > 0 for d in shape)
                or math.prod(shape) >= 2**62):
            raise NF4StateError(f"shape must be a non-empty list of positive integers of sane size, got {shape!r}")
        shape = tuple(shape)
        dtype = meta.get("dtype", "float32")
        if meta.get("quant_type", "nf4") != "nf4":
            raise NF4StateError(f"quant_type {meta.get('quant_type')!r} is not nf4")
        if blocksize not in VALID_BLOCKSIZES:
            raise NF4StateError(f"blocksize {blocksize} is not one of {VALID_BLOCKSIZES}")
        packed = get(w)
        quant_map = get(f"{w}.quant_map")
        absmax = get(f"{w}.absmax")
        if packed.dtype != np.uint8:
            raise NF4StateError(f"{w}: expected uint8 packed codes, got {packed.dtype}")
        if quant_map.dtype != np.float32 or quant_map.size != 16:
            raise NF4StateError(f"{w}.quant_map: expected 16 float32 values, got {quant_map.size} {quant_map.dtype}")
        nested = get(f"{w}.nested_absmax", required=False)
        try:
            if nested is None:
                if absmax.dtype != np.float32:
                    raise NF4StateError(f"{w}.absmax: expected float32 without nested state, got {absmax.dtype}")
                return cls(packed, absmax.reshape(-1), shape, blocksize, dtype, quant_map.reshape(-1))
            nested_code = get(f"{w}.nested_quant_map")
            if meta.get("nested_blocksize", NESTED_BLOCKSIZE) != NESTED_BLOCKSIZE:
                raise NF4StateError(f"nested_blocksize must be {NESTED_BLOCKSIZE}")
            if absmax.dtype != np.uint8:
                raise NF4StateError(f"{w}.absmax: expected uint8 with nested state, got {absmax.dtype}")
            if nested.dtype != np.float32 or nested_code.dtype != np.float32:
                raise NF4StateError("nested_absmax and nested_quant_map must be float32")
            offset = meta.get("nested_offset")
            if not _is_finite_number(offset):
                raise NF4StateError(f"quant state lacks a finite numeric nested_offset (got {str(offset)[:40]})")
            dq = _DoubleQuant(np.ascontiguousarray(absmax.reshape(-1)), np.ascontiguousarray(nested.reshape(-1)),
                              np.ascontiguousarray(nested_code.reshape(-1)), float(offset))
            return cls(packed, None, shape, blocksize, dtype, quant_map.reshape(-1), dq)
        except NF4StateError:
            raise
        except (ValueError, TypeError) as e:  # size/finiteness checks in the core
            raise NF4StateError(f"{w}: {e}") from None

    def save_safetensors(self, path: str | os.PathLike, prefix: str = "") -> None:
        """Write :meth:`state_dict` to a safetensors file (atomically)."""
        save_safetensors(path, self.state_dict(prefix))

    @classmethod
    def load_safetensors(cls, path: str | os.PathLike, prefix: str = "") -> "NF4Tensor":
        """Load the NF4 weight stored under ``{prefix}weight...`` in a safetensors file."""
        tensors = load_safetensors(path)
        with naming_file(path):
            return cls.from_state_dict({k: np.array(v) for k, v in tensors.items() if k.startswith(prefix + "weight")},
                                       prefix)
