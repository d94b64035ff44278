"""Tokenization of corpora, with every token traced back to its source characters.

Tokenization
------------
``tokenize(corpus, tokenizer, max_length=, mode=, max_tokens=)`` returns a :class:`TokenizedCorpus`
of :class:`TokenSequence` objects. For every token it keeps the document id, the position in that
document's token list and the ``(start, end)`` character span in the document text; special
tokens (BOS, the EOS separator of packed windows) get the empty span ``(0, 0)``.

* ``mode="documents"``: one sequence per document, truncated to ``max_length`` tokens.
* ``mode="packed"``: documents (tokenized without special tokens) are concatenated with the
  tokenizer's EOS token between them and cut into windows of exactly ``max_length`` tokens; the
  last partial window is dropped unless it is the only one. With a tokenizer that adds a BOS token
  itself (Gemma) and ``add_special_tokens=True``, every window starts with that BOS token; such a
  window-prefix token belongs to the document of the token after it, at position ``-1``.

Character spans come from the fast tokenizer's offset mapping; for slow tokenizers they are
recovered by incremental decoding (approximate where the tokenizer normalizes text).

:func:`tokenize_corpus` tokenizes a loaded :class:`~funcnet.data.corpus.Corpus`;
:func:`funcnet.data.corpus.tokenize` (the public entry point) also accepts anything
:func:`~funcnet.data.corpus.load_corpus` accepts and loads it first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from funcnet.core._io import sha256_text
from funcnet.core.forward import iter_batches
from funcnet.errors import FuncnetError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["TokenSequence", "TokenizedCorpus", "tokenize_corpus"]


@dataclass
class TokenSequence:
    """One model input: token ids with, for each token, its document, position and character span."""

    input_ids: np.ndarray   # int64 [n]
    doc_ids: np.ndarray     # int32 [n]
    positions: np.ndarray   # int32 [n] position in the document's token list (-1: window prefix)
    char_spans: np.ndarray  # int64 [n, 2] (start, end) into the document text; special tokens (0, 0)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def is_special(self) -> np.ndarray:
        """Boolean mask of tokens with an empty character span (special tokens)."""
        return self.char_spans[:, 0] == self.char_spans[:, 1]


class TokenizedCorpus:
    """Token sequences of a corpus, ready to batch, with per-token provenance."""

    def __init__(self, sequences: list[TokenSequence], corpus: Any, *, max_length: int, mode: str,
                 max_tokens: int | None, tokenizer_name: str, vocab_size: int, add_special_tokens: bool):
        self.sequences = sequences
        self.corpus = corpus
        self.max_length = max_length
        self.mode = mode
        self.max_tokens = max_tokens
        self.tokenizer_name = tokenizer_name
        self.vocab_size = vocab_size
        self.add_special_tokens = add_special_tokens

    def __len__(self) -> int:
        return len(self.sequences)

    def __repr__(self) -> str:
        return (f"TokenizedCorpus({self.corpus.name!r}, mode={self.mode!r}, {len(self)} sequences, "
                f"{self.n_tokens} tokens, max_length={self.max_length})")

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def identity(self) -> str:
        return sha256_text(self.corpus.identity, self.tokenizer_name, str(self.vocab_size), str(self.max_length),
                           self.mode, str(self.max_tokens), str(self.add_special_tokens))

    def metadata(self) -> dict[str, np.ndarray]:
        """All tokens' metadata concatenated in sequence order, plus ``seq_ids`` (sequence of each token)."""
        seqs = self.sequences
        return {
            "input_ids": np.concatenate([s.input_ids for s in seqs]),
            "doc_ids": np.concatenate([s.doc_ids for s in seqs]),
            "positions": np.concatenate([s.positions for s in seqs]),
            "char_spans": np.concatenate([s.char_spans for s in seqs]),
            "seq_ids": np.concatenate([np.full(len(s), i, dtype=np.int32) for i, s in enumerate(seqs)]),
        }

    def batches(self, batch_size: int, pad_token_id: int = 0) -> Iterator[tuple["torch.Tensor", "torch.Tensor", list[int]]]:
        """Yield ``(input_ids, attention_mask, seq_indices)`` batches in order, right-padded.

        ``input_ids`` and ``attention_mask`` are ``torch.long`` tensors of shape
        ``[batch, longest sequence of the batch]``; padding has mask 0 and id ``pad_token_id``
        (0 when None). See :func:`funcnet.core.forward.iter_batches`.
        """
        return iter_batches([s.input_ids for s in self.sequences], batch_size, pad_token_id)


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    return {int(i) for i in ids if i is not None}


def _special_prefix(tokenizer) -> list[int]:
    """Token ids the tokenizer puts before the text itself with ``add_special_tokens=True`` (e.g. BOS)."""
    with_sp = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    if not without:
        return with_sp
    for k in range(len(with_sp) - len(without) + 1):
        if with_sp[k:k + len(without)] == without:
            return with_sp[:k]
    return []


def _offsets_by_decoding(tokenizer, ids: Sequence[int], text: str, special: set[int]) -> np.ndarray:
    """Character spans of ``ids`` in ``text`` for tokenizers without an offset mapping.

    Tokens are decoded incrementally; a group of tokens that decodes to an incomplete character
    (a byte split across tokens) is resolved together and all its tokens share the span. Decoded
    pieces are located in ``text`` from a moving cursor (a leading space of the piece is included
    in the span, as fast tokenizers do); a piece that cannot be found (text changed by the
    tokenizer's normalizer) gets an empty span at the cursor.
    """
    spans = np.zeros((len(ids), 2), dtype=np.int64)
    cursor = 0
    group_start = 0
    for i, tid in enumerate(ids):
        if int(tid) in special:
            group_start = i + 1
            continue
        piece = tokenizer.decode(list(ids[group_start:i + 1]), skip_special_tokens=True,
                                 clean_up_tokenization_spaces=False)
        if piece.endswith("\ufffd") and i + 1 < len(ids):
            continue  # incomplete multi-byte character: wait for the next token
        piece = piece.replace("\u2581", " ")
        core = piece.strip()
        if core:
            p = text.find(core, cursor, cursor + len(piece) + 64)
            if p >= 0:
                start = p
                lead = len(piece) - len(piece.lstrip())
                if lead and p > cursor and text[max(cursor, p - lead):p].isspace():
                    start = max(cursor, p - lead)  # like fast tokenizers: the leading space is part of the token
                spans[group_start:i + 1] = (start, p + len(core))
                cursor = p + len(core)
            else:
                spans[group_start:i + 1] = (cursor, cursor)
        else:  # whitespace-only token
            ws = len(piece)
            spans[group_start:i + 1] = (cursor, min(cursor + ws, len(text)))
            cursor = min(cursor + ws, len(text))
        group_start = i + 1
    return spans


def _encode(tokenizer, texts: list[str], add_special_tokens: bool, special: set[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids int64 [n], spans int64 [n, 2]) for every text; special tokens get the span (0, 0)."""
    out = []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)
        for ids, offs in zip(enc["input_ids"], enc["offset_mapping"]):
            out.append((np.asarray(ids, dtype=np.int64), np.asarray(offs, dtype=np.int64).reshape(-1, 2)))
    else:
        for t in texts:
            ids = list(tokenizer(t, add_special_tokens=add_special_tokens, verbose=False)["input_ids"])
            out.append((np.asarray(ids, dtype=np.int64), _offsets_by_decoding(tokenizer, ids, t, special)))
    for ids, spans in out:
        if ids.size and special:
            spans[np.isin(ids, list(special))] = 0
    return out


def _iter_encoded(tokenizer, corpus: Any, add_special_tokens: bool, special: set[int], chunk: int = 64):
    """Yield (doc_id, ids, spans) lazily, tokenizing ``chunk`` documents at a time."""
    docs = corpus.documents
    for lo in range(0, len(docs), chunk):
        part = docs[lo:lo + chunk]
        for d, (ids, spans) in zip(part, _encode(tokenizer, [d.text for d in part], add_special_tokens, special)):
            yield d.doc_id, ids, spans


def tokenize_corpus(
    corpus: Any,
    tokenizer: Any,
    *,
    max_length: int = 128,
    mode: str = "documents",
    max_tokens: int | None = None,
    add_special_tokens: bool = True,
) -> TokenizedCorpus:
    """Tokenize a loaded :class:`~funcnet.data.corpus.Corpus` (use :func:`funcnet.data.corpus.tokenize`
    for corpus specs, lists of strings and the like).

    ``mode="documents"``: one sequence per document, truncated to ``max_length``; with
    ``max_tokens`` the total stops there exactly (the last sequence is cut).
    ``mode="packed"``: EOS-separated documents cut into windows of exactly ``max_length`` tokens
    (last partial window dropped unless it is the only one); with ``max_tokens`` the number of
    windows is ``max_tokens // max_length`` (at least one).
    ``tokenizer`` may also be an object with a ``.tokenizer`` attribute (``LoadedModel``).
    """
    if not callable(tokenizer) and hasattr(tokenizer, "tokenizer"):
        tokenizer = tokenizer.tokenizer
    if mode not in ("documents", "packed"):
        raise FuncnetError(f"unknown tokenization mode {mode!r}; valid: documents, packed")
    if not isinstance(max_length, int) or max_length < 1:
        raise FuncnetError(f"max_length must be a positive integer, got {max_length!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise FuncnetError(f"max_tokens must be a positive integer, got {max_tokens!r}")

    special = _special_ids(tokenizer)
    if mode == "documents":
        sequences = _tokenize_documents(corpus, tokenizer, max_length, max_tokens, add_special_tokens, special)
    else:
        sequences = _tokenize_packed(corpus, tokenizer, max_length, max_tokens, add_special_tokens, special)
    if not sequences:
        raise FuncnetError(f"corpus {corpus.name!r} has no tokens after tokenization")
    return TokenizedCorpus(
        sequences, corpus, max_length=max_length, mode=mode, max_tokens=max_tokens,
        tokenizer_name=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        vocab_size=len(tokenizer), add_special_tokens=add_special_tokens,
    )


def _tokenize_documents(corpus, tokenizer, max_length, max_tokens, add_special_tokens, special) -> list[TokenSequence]:
    sequences = []
    total = 0
    cut, longest = 0, 0
    for doc_id, ids, spans in _iter_encoded(tokenizer, corpus, add_special_tokens, special):
        # a document whose only tokens are special tokens has no tokens of its own: skip it
        if ids.size == 0 or np.isin(ids, list(special)).all():
            continue
        n = min(len(ids), max_length)
        if len(ids) > max_length:
            cut, longest = cut + 1, max(longest, len(ids))
        if max_tokens is not None:
            n = min(n, max_tokens - total)
        sequences.append(TokenSequence(
            input_ids=ids[:n].copy(),
            doc_ids=np.full(n, doc_id, dtype=np.int32),
            positions=np.arange(n, dtype=np.int32),
            char_spans=spans[:n].copy(),
        ))
        total += n
        if max_tokens is not None and total >= max_tokens:
            break
    if cut:  # reported once per corpus, never silently
        log.warning("%d of %d documents were longer than max_length=%d tokens and were cut to it (the longest had "
                    "%d tokens); raise --max-length or use --mode packed to keep more text",
                    cut, len(sequences), max_length, longest)
    return sequences


def _tokenize_packed(corpus, tokenizer, max_length, max_tokens, add_special_tokens, special) -> list[TokenSequence]:
    prefix = _special_prefix(tokenizer) if add_special_tokens else []
    content = max_length - len(prefix)
    if content < 1:
        raise FuncnetError(f"max_length {max_length} leaves no room for text after the {len(prefix)} special prefix tokens")
    sep = getattr(tokenizer, "eos_token_id", None)
    if sep is None:
        sep = getattr(tokenizer, "sep_token_id", None)
    need = None if max_tokens is None else max(1, max_tokens // max_length) * content

    ids_l, doc_l, pos_l, span_l = [], [], [], []
    have = 0
    any_text = False
    for doc_id, ids, spans in _iter_encoded(tokenizer, corpus, False, special):
        if ids.size == 0:
            continue
        any_text = True
        if sep is not None:
            ids = np.append(ids, np.int64(sep))
            spans = np.vstack([spans, np.zeros((1, 2), dtype=np.int64)])
        ids_l.append(ids)
        doc_l.append(np.full(len(ids), doc_id, dtype=np.int32))
        pos_l.append(np.arange(len(ids), dtype=np.int32))
        span_l.append(spans)
        have += len(ids)
        if need is not None and have >= need:
            break
    if not any_text:
        return []
    all_ids, all_docs = np.concatenate(ids_l), np.concatenate(doc_l)
    all_pos, all_spans = np.concatenate(pos_l), np.concatenate(span_l)
    if sep is not None and (need is None or have < need):
        # the separator after the last document separates nothing: drop it
        all_ids, all_docs, all_pos, all_spans = all_ids[:-1], all_docs[:-1], all_pos[:-1], all_spans[:-1]
    n_windows = len(all_ids) // content
    if need is not None:
        n_windows = min(n_windows, need // content)
    if n_windows == 0:
        bounds = [(0, len(all_ids))]  # shorter than one window: keep it as the only sequence
    else:
        bounds = [(w * content, (w + 1) * content) for w in range(n_windows)]
    sequences = []
    for a, b in bounds:
        ids, docs, pos, spans = all_ids[a:b], all_docs[a:b], all_pos[a:b], all_spans[a:b]
        if prefix:
            k = len(prefix)
            ids = np.concatenate([np.asarray(prefix, dtype=np.int64), ids])
            docs = np.concatenate([np.full(k, docs[0], dtype=np.int32), docs])
            pos = np.concatenate([np.full(k, -1, dtype=np.int32), pos])
            spans = np.vstack([np.zeros((k, 2), dtype=np.int64), spans])
        sequences.append(TokenSequence(ids.copy(), docs.copy(), pos.copy(), spans.copy()))
    return sequences

