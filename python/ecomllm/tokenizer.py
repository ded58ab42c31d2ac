"""Sentencepiece tokenizers: load a Llama/Mistral ``tokenizer.model``, encode and decode, train one.

The work runs in the C++ core (the sentencepiece library) with the GIL released; the ids are
those of the ``sentencepiece`` Python package on the same model file.

Example::

    >>> from ecomllm import Tokenizer
    >>> tok = Tokenizer.train(["titles.txt"], vocab_size=8000, output_path="tok.model")
    >>> ids = tok.encode("Philips Steam Iron 2400 W", add_bos=True)
    >>> tok.decode(ids)
    'Philips Steam Iron 2400 W'
    >>> tok.encode(["one", "two"])          # a list in, a list of id lists out (in parallel)
    [[...], [...]]
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence, overload

from . import _core

__all__ = ["Tokenizer", "TRAIN_OPTIONS"]

# Options of Tokenizer.train beyond vocab_size (see Tokenizer.train for their meaning).
TRAIN_OPTIONS = (
    "model_type", "byte_fallback", "character_coverage", "split_digits", "user_defined_symbols",
    "max_sentence_length", "input_sentence_size", "shuffle_input_sentence", "num_threads", "seed",
    "normalization_rule_name", "add_dummy_prefix", "remove_extra_whitespaces",
    "allow_whitespace_only_pieces", "unk_id", "bos_id", "eos_id", "pad_id", "verbose",
)


class Tokenizer:
    """A sentencepiece model: ``Tokenizer.from_file("tokenizer.model")`` or ``Tokenizer.train(...)``.

    Llama / Mistral models are BPE with byte fallback and ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2,
    no ``<pad>`` (``pad_id == -1``). Bad input (a missing or corrupt file, an id outside
    ``[0, vocab_size)``) raises ValueError.

    >>> tok = Tokenizer.from_file("tokenizer.model")
    >>> tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id
    (1, 2, 0, -1)
    >>> tok.encode_as_pieces("Hello world")
    ['▁Hello', '▁world']
    """

    __slots__ = ("_tok",)

    def __init__(self, core: _core.Tokenizer):
        if not isinstance(core, _core.Tokenizer):
            raise TypeError("use Tokenizer.from_file, Tokenizer.from_bytes or Tokenizer.train")
        self._tok = core

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a sentencepiece model file (``tokenizer.model``).

        Raises ValueError naming the path when the file is missing or is not a sentencepiece model,
        including models sentencepiece itself would load but that are unsafe or unusable from
        Python: a normalizer charsmap whose trie points outside itself (encoding would read out of
        bounds) or a piece that is not UTF-8.

        >>> tok = Tokenizer.from_file("TinyLlama-1.1B/tokenizer.model")
        >>> len(tok)
        32000
        """
        return cls(_core.Tokenizer.from_file(os.fsdecode(path)))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Tokenizer":
        """Load a model from the bytes of a model file (e.g. ``tok.serialized_model()``).

        >>> same = Tokenizer.from_bytes(open("tokenizer.model", "rb").read())
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes expects bytes, got {type(data).__name__}")
        return cls(_core.Tokenizer.from_bytes(bytes(data)))

    @classmethod
    def train(
        cls,
        corpus_files: str | os.PathLike | Iterable[str | os.PathLike],
        vocab_size: int,
        output_path: str | os.PathLike,
        **options,
    ) -> "Tokenizer":
        """Train a model on the lines of ``corpus_files`` and write it to ``output_path``.

        The file is written atomically: a failed or interrupted training leaves no partial model
        there (and an existing file untouched). The defaults give a Llama-style model.

        Options (keyword arguments, defaults in brackets):

        - ``model_type`` ["bpe"] or "unigram"
        - ``byte_fallback`` [True]: unknown characters become ``<0xNN>`` byte pieces, never ``<unk>``
        - ``character_coverage`` [0.9995]: share of characters that get their own piece
        - ``split_digits`` [True]: every digit is its own piece
        - ``user_defined_symbols`` [[]]: strings always kept as one piece (e.g. "[CLASSIFY]")
        - ``max_sentence_length`` [4192 bytes]: longer lines are skipped
        - ``input_sentence_size`` [0 = all lines], ``shuffle_input_sentence`` [True]: sampling
        - ``num_threads`` [0 = all cores], ``seed`` [42]: sentencepiece's random seed (with the
          0.1.97 library training is deterministic whatever the seed)
        - ``normalization_rule_name`` ["identity"; or nfkc, nmt_nfkc, nfkc_cf, nmt_nfkc_cf]
        - ``add_dummy_prefix`` [True], ``remove_extra_whitespaces`` [False],
          ``allow_whitespace_only_pieces`` [True]
        - ``unk_id`` [0], ``bos_id`` [1], ``eos_id`` [2], ``pad_id`` [-1 = none]
        - ``verbose`` [False]: sentencepiece's training log on stderr

        Raises ValueError for a missing corpus file, an unknown option or a vocabulary the corpus
        cannot fill (with sentencepiece's reason).

        >>> tok = Tokenizer.train(["corpus.txt"], 4000, "tok.model", user_defined_symbols=["[QA]"])
        >>> tok.encode_as_pieces("[QA] price?")[:2]
        ['▁', '[QA]']
        """
        if isinstance(corpus_files, (str, os.PathLike)):
            corpus_files = [corpus_files]
        files = [os.fsdecode(f) for f in corpus_files]
        opts = _core.TokenizerTrainOptions()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
        opts.vocab_size = vocab_size
        for key, value in options.items():
            if key not in TRAIN_OPTIONS:
                raise TypeError(f"Tokenizer.train: unknown option {key!r}; known: {', '.join(TRAIN_OPTIONS)}")
            if key == "user_defined_symbols":
                if isinstance(value, str):
                    raise TypeError("user_defined_symbols must be a list of str, not one str")
                value = list(value)
            setattr(opts, key, value)
        return cls(_core.Tokenizer.train(files, os.fsdecode(output_path), opts))

    def save(self, path: str | os.PathLike) -> None:
        """Write the model file atomically (temp file + rename)."""
        self._tok.save(os.fsdecode(path))

    def serialized_model(self) -> bytes:
        """The bytes of the model file."""
        return self._tok.serialized_model()

    # ---- encode / decode -----------------------------------------------------------------------
    @overload
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...
    @overload
    def encode(self, text: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]: ...

    def encode(self, text, add_bos: bool = False, add_eos: bool = False):
        """Text to token ids; a list of texts to a list of id lists (encoded in parallel).

        >>> tok.encode("Steam Iron", add_bos=True)
        [1, ...]
        >>> tok.encode(["a", "b"], add_eos=True)
        [[..., 2], [..., 2]]
        """
        if isinstance(text, str):
            return self._tok.encode(text, add_bos, add_eos)
        return self._tok.encode_batch(text, add_bos, add_eos)

    def decode(self, ids):
        """Token ids to text; a list of id lists to a list of texts.

        Control ids (``<s>``, ``</s>``) decode to nothing; an id outside ``[0, vocab_size)``
        raises ValueError.

        >>> tok.decode(tok.encode("Steam Iron"))
        'Steam Iron'
        """
        if not hasattr(ids, "__getitem__"):  # a generator: look at it once
            ids = list(ids)
        if _is_batch(ids):
            return self._tok.decode_batch(ids)
        return self._tok.decode(ids)

    def encode_as_pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` (``"▁"`` marks a preceding space)."""
        return self._tok.encode_as_pieces(text)

    # ---- vocabulary ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of pieces V (ids are 0 .. V-1)."""
        return self._tok.vocab_size

    def __len__(self) -> int:
        return self._tok.vocab_size

    @property
    def bos_id(self) -> int:
        """Id of ``<s>``, or -1 when the model has none."""
        return self._tok.bos_id

    @property
    def eos_id(self) -> int:
        """Id of ``</s>``, or -1 when the model has none."""
        return self._tok.eos_id

    @property
    def unk_id(self) -> int:
        """Id of ``<unk>``."""
        return self._tok.unk_id

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``, or -1 when the model has none (Llama, Mistral)."""
        return self._tok.pad_id

    def id_to_piece(self, id: int) -> str:
        """The piece of an id (ValueError outside ``[0, vocab_size)``)."""
        return self._tok.id_to_piece(id)

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece, ``unk_id`` when it is not in the vocabulary."""
        return self._tok.piece_to_id(piece)

    def is_byte(self, id: int) -> bool:
        """True for the byte-fallback pieces ``<0x00>`` .. ``<0xFF>``."""
        return self._tok.is_byte(id)

    def is_control(self, id: int) -> bool:
        """True for control pieces (``<s>``, ``</s>``, ``<pad>``)."""
        return self._tok.is_control(id)

    def is_unknown(self, id: int) -> bool:
        """True for ``<unk>``."""
        return self._tok.is_unknown(id)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id})"


def _is_batch(ids) -> bool:
    """A list of id lists (or a 2-d array) rather than one id list."""
    ndim = getattr(ids, "ndim", None)
    if ndim is not None:
        return ndim == 2
    if isinstance(ids, (str, bytes)):
        return False
    try:
        first = next(iter(ids))
    except (TypeError, StopIteration):
        return False
    return not isinstance(first, (str, bytes)) and hasattr(first, "__iter__")
