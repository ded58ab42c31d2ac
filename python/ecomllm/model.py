"""Llama / Mistral models on the C++ core: load Hugging Face checkpoints, add LoRA adapters,
compute logits, losses and gradients, save in Hugging Face / PEFT formats.

Typical QLoRA fine-tuning::

    model = ecomllm.Model.from_pretrained("TinyLlama-1.1B", quantize="nf4")
    model.add_lora(ecomllm.LoraConfig(r=16, alpha=32, dropout=0.05, target_modules="all-linear"))
    opt = ecomllm.AdamW(model.trainable_parameters(), lr=2e-4)
    loss = model.forward_backward(input_ids, labels)      # mean loss; gradients accumulate
    opt.step(); model.zero_grad()
    model.save_adapter("out/adapter")                      # loads in peft.PeftModel.from_pretrained

``input_ids`` / ``labels`` are integer arrays [B, T] with right padding; labels of -100 are
ignored (transformers' convention, with the same one-token shift); ``attention_mask`` [B, T]
marks real tokens with 1. ``position_ids`` [B, T] that restart at 0 inside a row mark packed
examples: attention never crosses from one to the next.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import _core
from ._errors import naming_file

__all__ = ["Model", "LoraConfig", "ModelConfig"]

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """A LoRA adapter as PEFT's ``LoraConfig`` describes it.

    ``target_modules``: module-name suffixes (``["q_proj", "v_proj"]``), ``"all-linear"`` (all
    seven projections), or another string, taken as a regular expression that must match the full
    module name (``model.layers.3.mlp.up_proj``) as PEFT does. ``None`` means PEFT's default for
    Llama/Mistral, ``["q_proj", "v_proj"]``. Scaling is ``alpha / r``, or ``alpha / sqrt(r)`` with
    ``use_rslora``. ``seed`` fixes A's kaiming-uniform initialisation (B starts at zero).
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: Sequence[str] | str | None = None
    use_rslora: bool = False
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.r, (int, np.integer)) or isinstance(self.r, bool) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is None:
            self.target_modules = ["q_proj", "v_proj"]
        elif not isinstance(self.target_modules, str):
            self.target_modules = [str(t) for t in self.target_modules]
            if not self.target_modules:
                raise ValueError("LoraConfig.target_modules must not be empty")

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r ** 0.5 if self.use_rslora else self.r)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, as in the model's Hugging Face ``config.json``."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    sliding_window: int | None
    tie_word_embeddings: bool
    bos_token_id: int
    eos_token_id: int
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = [f for f in cls.__dataclass_fields__ if f != "raw"]
        values = {k: d.get(k) for k in names}
        return cls(**values, raw=dict(d))

    def to_dict(self) -> dict:
        return dict(self.raw)


def _ids(name: str, a, required: bool = True) -> np.ndarray | None:
    """An integer array [B, T] as C-contiguous int32; a clear error for anything else."""
    if a is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an integer array [B, T], got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{name}: values do not fit in int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


class Model:
    """A Llama/Mistral causal language model whose numbers live in the C++ core."""

    def __init__(self, core: "_core.LlamaModel"):
        self._core = core
        self.config = ModelConfig.from_dict(json.loads(core.config_json()))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, quantize: str | None = None, dtype: str = "fp32",
                        blocksize: int = 64, double_quant: bool = True) -> "Model":
        """Loads a Hugging Face model folder (config.json + model.safetensors or shards).

        ``quantize="nf4"`` stores the seven projections of every layer in NF4 (QLoRA; double
        quantization on by default); embeddings, norms and lm_head stay dense. ``dtype`` is the
        storage of the dense weights: ``"fp32"`` or ``"bf16"`` (frozen). Projections saved by
        bitsandbytes in its 4-bit layout load as they are.
        """
        if quantize not in (None, "nf4"):
            raise ValueError(f"quantize must be None or 'nf4', got {quantize!r}")
        if dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a directory (expected a Hugging Face model folder)")
        with naming_file(path):
            core = _core.LlamaModel.from_pretrained(path, nf4=quantize == "nf4", bf16=dtype == "bf16",
                                                    blocksize=blocksize, double_quant=double_quant)
        return cls(core)

    @classmethod
    def from_config(cls, config: dict | ModelConfig, seed: int = 0, init_std: float = 0.02) -> "Model":
        """A fresh fp32 model (weights ~ normal(0, init_std), norms 1), e.g. to pre-train."""
        d = config.to_dict() if isinstance(config, ModelConfig) else dict(config)
        d.setdefault("model_type", "llama")
        return cls(_core.LlamaModel.from_config(json.dumps(d), seed, init_std))

    def save_pretrained(self, path: str | os.PathLike, dtype: str = "fp32",
                        max_shard_size: int = 5 << 30) -> None:
        """Writes config.json + safetensors that ``transformers`` loads (NF4 weights dequantized;
        a merged adapter is included; an unmerged one is not: see ``save_adapter``)."""
        if dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
        self._core.save_pretrained(os.fspath(path), dtype == "bf16", int(max_shard_size))

    # ---- weights ------------------------------------------------------------------------
    def weight_names(self) -> list[str]:
        return self._core.weight_names()

    def get_weight(self, name: str) -> np.ndarray:
        """A base weight by its Hugging Face name, as fp32 (dequantized when stored in NF4/bf16)."""
        return self._core.get_weight(name)

    def set_weight(self, name: str, value) -> None:
        self._core.set_weight(name, np.asarray(value, dtype=np.float32))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return self._core.num_parameters(trainable_only)

    def prepare_decoding(self, enabled: bool = True, *, keep_codes: bool = True) -> int:
        """Faster exact token-by-token decoding for an NF4 model.

        Gives every NF4 projection and the NF4 ``lm_head`` a decode layout of its codes for the
        product-table kernel (see :meth:`ecomllm.quant.NF4Tensor.prepare_decoding`): forward
        passes of up to 16 tokens then stream the weights faster (AVX-512 VBMI + VNNI, or AVX2),
        with the same results to ~1e-6, and longer prefills decode their weight panels from
        the layout (same bits, faster; on AMX tiles they restore the codes). The layouts take ~4.13
        bits per double-quantized NF4 weight with AVX-512 VBMI (8-bit scale codes), 4.5 otherwise
        (fp32 scales; :attr:`decoding_nbytes`). ``keep_codes=True`` keeps bitsandbytes' packed codes
        as well; ``keep_codes=False`` releases them, for ~4.25 bits per weight held in all
        (~4.6 with fp32 scales) instead of ~8.6: the serving setting. Backward passes, merges and saving then restore
        each weight's codes per call.
        Returns how many layers have a layout (0 for a dense model or where the CPU lacks the
        instructions); ``enabled=False`` drops them, restoring released codes first. Replacing
        a weight (``set_weight``, loading) drops that layer's layout. Not to be called while
        another thread runs the model.
        """
        return int(self._core.prepare_decoding(bool(enabled), bool(keep_codes)))

    @property
    def decoding_nbytes(self) -> int:
        """Bytes held by the decode layouts of :meth:`prepare_decoding`."""
        return int(self._core.decoding_nbytes())

    # ---- adapters -----------------------------------------------------------------------
    def add_lora(self, config: LoraConfig | None = None, name: str = "default") -> int:
        """Adds a LoRA adapter (PEFT initialisation) and makes it the active, trained one.
        Returns how many projections it was put on."""
        config = config or LoraConfig()
        return self._core.add_adapter(name, int(config.r), float(config.alpha), float(config.dropout),
                                      bool(config.use_rslora), int(config.seed), config.target_modules)

    def set_adapter(self, name: str | None) -> None:
        """Makes adapter ``name`` the active one (None: run the bare base model)."""
        self._core.set_active_adapter(name or "")

    @property
    def active_adapter(self) -> str | None:
        return self._core.active_adapter or None

    def adapters(self) -> list[str]:
        return self._core.adapter_names()

    def delete_adapter(self, name: str) -> None:
        self._core.remove_adapter(name)

    def lora_weights(self, module: str, adapter: str = "default") -> tuple[np.ndarray, np.ndarray]:
        """(A [r, in], B [out, r]) of one module, e.g. ``model.layers.0.self_attn.q_proj`` (copies)."""
        return self._core.lora_weights(adapter, module)

    def set_lora_weights(self, module: str, A, B, adapter: str = "default") -> None:
        self._core.set_lora_weights(adapter, module, np.asarray(A, np.float32), np.asarray(B, np.float32))

    def save_adapter(self, path: str | os.PathLike, name: str | None = None) -> None:
        """Writes the adapter in PEFT's format (adapter_config.json + adapter_model.safetensors)."""
        name = name or self.active_adapter or "default"
        self._core.save_adapter(name, os.fspath(path))

    def load_adapter(self, path: str | os.PathLike, name: str = "default") -> str:
        """Loads a PEFT LoRA adapter folder (ours or peft's) and makes it active."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a directory (expected a PEFT adapter folder)")
        with naming_file(path):
            return self._core.load_adapter(path, name)

    def merge_adapter(self) -> None:
        """Folds the active adapter into the base weights (an NF4 base becomes dense fp32);
        ``unmerge_adapter`` restores the original base exactly."""
        self._core.merge_adapter()

    def unmerge_adapter(self) -> None:
        self._core.unmerge_adapter()

    # ---- training switches --------------------------------------------------------------
    def train_all_parameters(self, on: bool = True) -> None:
        """Full-parameter training (pre-training): embeddings, norms and every linear get
        gradients. Needs fp32 dense weights (no NF4 / bf16)."""
        self._core.set_train_all(bool(on))

    @property
    def gradient_checkpointing(self) -> bool:
        return self._core.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        """Recompute each decoder layer's activations in the backward pass (less memory, the
        same gradients)."""
        self._core.gradient_checkpointing = bool(on)

    @property
    def dropout_step(self) -> int:
        """How many ``forward_backward`` calls the model has made: it keys the LoRA dropout
        masks, so a resumed run restores it to draw the masks an uninterrupted run would."""
        return self._core.dropout_step

    @dropout_step.setter
    def dropout_step(self, step: int) -> None:
        if int(step) < 0:
            raise ValueError(f"dropout_step must be >= 0, got {step!r}")
        self._core.dropout_step = int(step)

    def trainable_parameters(self) -> "_core.ParameterList":
        """The tensors an optimiser updates (views into the model, kept alive by it)."""
        return self._core.trainable_parameters()

    def gradients(self) -> dict[str, np.ndarray]:
        """Gradients of the trainable tensors (copies), by PEFT / Hugging Face name."""
        return self._core.gradients()

    def zero_grad(self) -> None:
        self._core.zero_grad()

    # ---- compute ------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, position_ids=None) -> np.ndarray:
        """Logits [B, T, V] (fp32)."""
        return self._core.forward(_ids("input_ids", input_ids), _ids("attention_mask", attention_mask, False),
                                  _ids("position_ids", position_ids, False))

    __call__ = forward

    def forward_backward(self, input_ids, labels, attention_mask=None, position_ids=None,
                         num_items_in_batch: int | None = None) -> float:
        """Loss and gradients. Returns the mean loss over target tokens; gradients accumulate.

        With gradient accumulation pass ``num_items_in_batch`` = the number of target tokens in
        the whole accumulation window, so that gradients are those of the window's mean loss
        (transformers' convention); the returned value is still this batch's own mean.
        """
        ids = _ids("input_ids", input_ids)
        scale = 0.0 if num_items_in_batch is None else 1.0 / max(1, int(num_items_in_batch))
        total, n = self._core.forward_backward(ids, _ids("labels", labels), _ids("attention_mask", attention_mask, False),
                                               _ids("position_ids", position_ids, False), scale)
        return total / n if n else 0.0

    def loss(self, input_ids, labels, attention_mask=None, position_ids=None) -> tuple[float, int]:
        """(sum of token losses, number of target tokens) without gradients."""
        return self._core.loss(_ids("input_ids", input_ids), _ids("labels", labels),
                               _ids("attention_mask", attention_mask, False), _ids("position_ids", position_ids, False))
