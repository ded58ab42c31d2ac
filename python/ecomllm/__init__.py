"""ecomllm: fine-tune, evaluate and serve e-commerce language models on CPUs.

The numeric work runs in the C++ extension ``ecomllm._core``; this package is the Python face
of it. Available now:

- :class:`Model` / :class:`LoraConfig` / :class:`AdamW` -- Llama/Mistral forward and backward,
  LoRA on an fp32/bf16/NF4 base, Hugging Face and PEFT files (:mod:`ecomllm.model`).
- :mod:`ecomllm.quant` -- NF4 4-bit quantization (bitsandbytes-compatible) with fused matmuls.
- :mod:`ecomllm.index` -- :class:`HNSWIndex`, an HNSW vector index (filters, deletes, mmap files).
- :class:`Tokenizer` -- sentencepiece models (Llama/Mistral ``tokenizer.model``): encode, decode,
  train (:mod:`ecomllm.tokenizer`).
- :mod:`ecomllm.safetensors` -- dependency-free safetensors reading and atomic writing.
- :func:`cpu_info` / :func:`set_simd_level` -- which SIMD kernels run, and forcing a level.
"""

from __future__ import annotations

from . import _core
from .model import LoraConfig, Model, ModelConfig
from .optim import AdamW, clip_grad_norm
from .index import HNSWIndex
from .quant import NF4Tensor
from .bm25 import BM25Index
from .tokenizer import Tokenizer
from . import rag

__version__ = "0.1.0"


def cpu_info() -> dict:
    """CPU features seen by the core, the active SIMD level, whether the AMX tile path is on, the
    product-table kernel NF4 decode layouts use (``decode_kernel``: ``"avx512_vbmi"``, ``"avx2"``
    or None; see :meth:`ecomllm.quant.NF4Tensor.prepare_decoding`), whether the ``"medium"``
    matmul precision runs bf16 pairs on AVX512-BF16 here (``bf16_products``; see
    :func:`set_float32_matmul_precision`), and the thread count."""
    info = dict(_core.cpu_features())
    info["simd_level"] = _core.simd_level()
    info["decode_kernel"] = _core.decode_kernel()
    info["amx"] = _core.amx_active()
    info["bf16_products"] = _core.bf16_products_available()
    info["threads"] = _core.max_threads()
    return info


def set_simd_level(level: str) -> None:
    """Force the kernels' SIMD level: ``"scalar"``, ``"avx2"`` or ``"avx512"``.

    Raises ValueError if this CPU cannot run it. The environment variable ``ECOMLLM_CPU`` sets
    the starting level the same way.
    """
    _core.set_simd_level(level)


def set_amx_enabled(enabled: bool) -> None:
    """Switch the AMX tile path of the tiled products (32 rows and more) on or off.

    Where the CPU has AMX-BF16 (Intel Sapphire Rapids and later) and the SIMD level is avx512,
    fp32 / NF4 / bf16 weight products run on AMX tiles with every fp32 operand split into three
    bf16 parts (six cross products, fp32 accumulation): fp32 accuracy at about 1.6x the AVX-512
    kernels' speed. Off, they run on the AVX-512 kernels. ``ECOMLLM_AMX=0`` starts with it off.
    ``cpu_info()["amx"]`` tells whether it is on; switching it on where AMX is missing is harmless
    (the AVX-512 kernels keep running).
    """
    _core.set_amx_enabled(bool(enabled))


def set_float32_matmul_precision(precision: str) -> None:
    """Precision of the tiled matrix products (prefill, training; NF4, fp32 and bf16 weights),
    after ``torch.set_float32_matmul_precision``:

    * ``"highest"`` (default): fp32 accuracy. On AMX, every fp32 operand as three bf16 parts and
      six cross products;
    * ``"high"``: on AMX two parts, three products: ~1.5e-5 relative per product, about 2x the
      speed of the tile products; elsewhere fp32;
    * ``"medium"``: both operands rounded to bf16 (to nearest even), products summed in fp32: the
      usual QLoRA compute dtype (``bnb_4bit_compute_dtype=torch.bfloat16``), ~4e-3 relative per
      product. On AMX (products of 32 rows and more) about 5x the speed of the tile products; on
      AVX-512 CPUs with AVX512-BF16 (``cpu_info()["bf16_products"]``: Zen 4, Cooper Lake, and
      Sapphire Rapids below AMX's 32 rows) the tiled products -- the forward GEMM past the few-row
      kernels, and every ``matmul_t`` -- use VDPBF16PS: measured on Zen 4 (2 threads, NF4 4096 x
      4096, 128 rows) 1.7-1.8x the fp32 forward and ~1.7x the backward. The few-row kernels
      (M = 1 decoding and the like) stay exact.

    Where neither runs (AVX2, scalar) products stay fp32 at every setting.
    ``ECOMLLM_MATMUL_PRECISION`` sets the starting value; ValueError on other names.
    """
    _core.set_fp32_matmul_precision(precision)


def get_float32_matmul_precision() -> str:
    """The precision ``set_float32_matmul_precision`` set (``"highest"`` by default)."""
    return _core.fp32_matmul_precision()


def simd_level() -> str:
    """The SIMD level the kernels use now."""
    return _core.simd_level()


__all__ = ["Tokenizer", "HNSWIndex", "BM25Index", "rag", "Model", "ModelConfig", "LoraConfig", "AdamW", "clip_grad_norm", "NF4Tensor", "cpu_info", "set_simd_level", "set_amx_enabled", "set_float32_matmul_precision", "get_float32_matmul_precision", "simd_level", "__version__"]
