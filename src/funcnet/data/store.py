"""On-disk activation store: streaming, chunked, resumable, memory-mapped for reading.

Layout of a store folder::

    manifest.json            what was recorded (model identity, corpus identity, signals, layers, shapes, dtype)
    progress.json            completed chunks (rewritten atomically after each chunk)
    tokens/<field>.npy       per-token metadata: seq_ids, doc_ids, positions, token_ids, char_spans
    acts/L<layer>.<signal>.npy   one NumPy ``.npy`` array per layer and signal, shape [tokens, width]

Every ``.npy`` array is allocated at its final size when the store is created (the tokenized corpus
is known in advance), then filled chunk by chunk with plain positioned writes (no mapping, so the
writer's memory does not grow with the number of tokens). A chunk counts as done only after all of
its rows in every array are written and ``progress.json`` names it, so an interrupted run resumes
at the first unfinished chunk and never rewrites a finished one. Readers get ``numpy.memmap`` views
``[tokens, width]`` (float16 by default; bfloat16 is stored as raw uint16 and converted on read).
"""
from __future__ import annotations

import json
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from funcnet.core._io import OUTPUT_MARKER, foreign_entries, mark_output, write_json
from funcnet.errors import FuncnetError

FORMAT = "funcnet-activation-store"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32, "bfloat16": np.uint16}
TOKEN_FIELDS = ("seq_ids", "doc_ids", "positions", "token_ids", "char_spans")
#: what a store folder holds (all written by funcnet)
STORE_ENTRIES = ("manifest.json", "progress.json", ".incomplete", "tokens", "acts", OUTPUT_MARKER)


def store_owned(path) -> str | None:
    """None when ``path`` is a store folder funcnet wrote that holds nothing else, else the reason."""
    extra = foreign_entries(path, known=STORE_ENTRIES)
    if extra is None:
        return "it is not an activation store funcnet wrote; remove it yourself or choose another --out"
    if extra:
        return f"it holds files funcnet did not write ({', '.join(extra[:5])}); choose another --out"
    return None


def looks_like_store(path) -> bool:
    """True for a folder funcnet wrote as an activation store, a damaged one (no manifest) included."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "manifest.json").is_file():
        return True
    marker = p / OUTPUT_MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("kind") == "activation-store"
        except (OSError, ValueError, AttributeError):
            return False
    return (p / "acts").is_dir() and (p / "tokens").is_dir()


#: what reading a damaged ``.npy`` file raises (a bad header is parsed with ast.literal_eval)
_NPY_ERRORS = (OSError, ValueError, SyntaxError, EOFError, tokenize.TokenError)


def _damaged(store_path, rel: str, e: BaseException) -> FuncnetError:
    first = (str(e).splitlines() or [""])[0][:160]
    return FuncnetError(f"activation store {store_path} is damaged: cannot read {rel} ({type(e).__name__}: {first}); "
                        "record it again with --overwrite")


def act_name(layer: int, signal: str) -> str:
    return f"L{layer:03d}.{signal}"


def _alloc_npy(path: Path, shape: tuple[int, ...], dtype) -> None:
    """Create a .npy file of the given shape without holding its data in memory."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    del arr


def _npy_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


@dataclass
class Chunk:
    index: int
    seq_start: int
    seq_stop: int
    tok_start: int
    tok_stop: int

    @property
    def n_tokens(self) -> int:
        return self.tok_stop - self.tok_start


def plan_chunks(seq_lengths: Sequence[int], chunk_tokens: int) -> list[Chunk]:
    """Group consecutive sequences into chunks of about ``chunk_tokens`` tokens."""
    chunks, start_seq, start_tok, tok = [], 0, 0, 0
    for i, n in enumerate(seq_lengths):
        tok += int(n)
        if tok - start_tok >= chunk_tokens:
            chunks.append(Chunk(len(chunks), start_seq, i + 1, start_tok, tok))
            start_seq, start_tok = i + 1, tok
    if start_seq < len(seq_lengths):
        chunks.append(Chunk(len(chunks), start_seq, len(seq_lengths), start_tok, tok))
    return chunks


class ArraySource:
    """A streamable view of one or more (layer, signal) arrays of a store: ``iter_chunks()`` yields
    float32 ``[tokens, width]`` blocks (columns of several layers concatenated), ``shape`` gives the
    full shape. This is what :class:`funcnet.ica.CanICA` streams from."""

    def __init__(self, store: "ActivationStore", keys: Sequence[tuple[int, str]], chunk_tokens: int = 4096,
                 token_index: np.ndarray | None = None):
        self.store, self.keys, self.chunk_tokens = store, list(keys), int(chunk_tokens)
        self.token_index = token_index

    @property
    def n_tokens(self) -> int:
        return len(self.token_index) if self.token_index is not None else self.store.n_tokens

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_tokens, sum(self.store.width(l, s) for l, s in self.keys))

    @property
    def columns(self) -> list[tuple[int, str, int]]:
        """(layer, signal, index) of every column."""
        return [(l, s, j) for l, s in self.keys for j in range(self.store.width(l, s))]

    def iter_chunks(self) -> Iterator[np.ndarray]:
        arrays = [self.store.layer(l, s) for l, s in self.keys]
        n = self.n_tokens
        for start in range(0, n, self.chunk_tokens):
            stop = min(n, start + self.chunk_tokens)
            rows = slice(start, stop) if self.token_index is None else self.token_index[start:stop]
            yield np.concatenate([self.store._to_float(a[rows]) for a in arrays], axis=1)

    def to_array(self) -> np.ndarray:
        return np.concatenate(list(self.iter_chunks()), axis=0) if self.n_tokens else np.zeros(self.shape, np.float32)

    def subject_stream(self) -> "SubjectStream":
        """The documents as a stream (one chunk = one subject, read from disk at every pass):
        what group ICA of many neurons needs when the subjects do not fit in memory."""
        return SubjectStream([self])

    def subjects(self) -> list[np.ndarray]:
        """One float32 array per document (the 'subjects' of group ICA), all in memory."""
        return list(self.subject_stream().iter_chunks())


class SubjectStream:
    """Documents of one or more sources (same store and tokens; columns side by side) as a
    re-iterable stream for :class:`funcnet.ica.CanICA`: ``iter_chunks()`` yields one float32
    ``[tokens, width]`` array per document, memory-mapped from the store, never all at once."""

    def __init__(self, sources: Sequence[ArraySource]):
        if not sources:
            raise FuncnetError("SubjectStream needs at least one source")
        self.sources = list(sources)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.sources[0].n_tokens, sum(s.shape[1] for s in self.sources))

    def iter_chunks(self) -> Iterator[np.ndarray]:
        src = self.sources[0]
        arrays = [(s.store, s.store.layer(l, sig)) for s in self.sources for l, sig in s.keys]
        for rows in src.store.document_rows(src.token_index):
            yield np.concatenate([st._to_float(a[rows]) for st, a in arrays], axis=1)


class ActivationStore:
    """Read (and, through :func:`funcnet.record.record`, write) an activation store folder."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}
        self._tokens: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path, manifest: dict, token_meta: dict[str, np.ndarray], widths: dict[tuple[int, str], int],
               dtype: str = "float16") -> "ActivationStore":
        path = Path(path)
        if dtype not in STORAGE_DTYPES:
            raise FuncnetError(f"unknown storage dtype '{dtype}'; choose from {', '.join(STORAGE_DTYPES)}")
        n = int(len(token_meta["token_ids"]))
        (path / "acts").mkdir(parents=True, exist_ok=True)
        (path / "tokens").mkdir(parents=True, exist_ok=True)
        mark_output(path, "activation-store", STORE_ENTRIES)
        (path / ".incomplete").touch()
        for name in TOKEN_FIELDS:
            np.save(path / "tokens" / f"{name}.npy", np.ascontiguousarray(token_meta[name]))
        for (layer, signal), width in widths.items():
            _alloc_npy(path / "acts" / f"{act_name(layer, signal)}.npy", (n, int(width)), STORAGE_DTYPES[dtype])
        manifest = dict(manifest)
        manifest.update(
            format=FORMAT, format_version=FORMAT_VERSION, dtype=dtype, n_tokens=n,
            arrays={act_name(l, s): {"layer": l, "signal": s, "width": int(w)} for (l, s), w in widths.items()},
        )
        write_json(path / "manifest.json", manifest)
        write_json(path / "progress.json", {"done": []})
        (path / ".incomplete").unlink()
        return cls(path, manifest)

    @classmethod
    def open(cls, path) -> "ActivationStore":
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            if looks_like_store(path):
                why = ("its recording was interrupted before it began" if (path / ".incomplete").exists()
                       else "its manifest.json is missing")
                raise FuncnetError(f"activation store '{path}' is incomplete or damaged ({why}); record it again "
                                   "with `funcnet record ... --overwrite`")
            raise FuncnetError(f"'{path}' is not an activation store (no manifest.json)")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise FuncnetError(f"activation store manifest {mf} is corrupt: {e}") from e
        if manifest.get("format") != FORMAT:
            raise FuncnetError(f"'{path}' is not a funcnet activation store")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise FuncnetError(f"activation store {path} has format version {manifest['format_version']}; "
                               f"this funcnet reads up to {FORMAT_VERSION}")
        return cls(path, manifest)

    # ------------------------------------------------------------------ progress
    @property
    def chunks(self) -> list[Chunk]:
        return [Chunk(*c) for c in self.manifest["chunks"]]

    def done_chunks(self) -> set[int]:
        try:
            return set(json.loads((self.path / "progress.json").read_text())["done"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return set()

    def mark_done(self, chunk: int) -> None:
        done = sorted(self.done_chunks() | {int(chunk)})
        write_json(self.path / "progress.json", {"done": done})

    @property
    def complete(self) -> bool:
        return len(self.done_chunks()) == len(self.manifest["chunks"])

    def write_rows(self, layer: int, signal: str, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` ([n, width], storage dtype) at token offset ``start`` (positioned write)."""
        path = self.path / "acts" / f"{act_name(layer, signal)}.npy"
        width = self.width(layer, signal)
        rows = np.ascontiguousarray(rows, dtype=STORAGE_DTYPES[self.dtype])
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(f"rows of shape {rows.shape} do not fit {act_name(layer, signal)} width {width}")
        off = self._offset(path) + start * width * rows.itemsize
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(rows.tobytes())

    def _offset(self, path: Path) -> int:
        key = str(path)
        if key not in self._offsets:
            try:
                self._offsets[key] = _npy_data_offset(path)
            except _NPY_ERRORS as e:
                raise _damaged(self.path, f"{path.parent.name}/{path.name}", e) from e
        return self._offsets[key]

    @property
    def _offsets(self) -> dict:
        if not hasattr(self, "_off_cache"):
            self._off_cache: dict[str, int] = {}
        return self._off_cache

    # ------------------------------------------------------------------ reading
    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def layers(self) -> list[int]:
        return sorted({v["layer"] for v in self.manifest["arrays"].values()})

    @property
    def signals(self) -> list[str]:
        return list(dict.fromkeys(v["signal"] for v in self.manifest["arrays"].values()))

    def width(self, layer: int, signal: str = "neurons") -> int:
        key = act_name(layer, signal)
        if key not in self.manifest["arrays"]:
            raise FuncnetError(
                f"store {self.path} has no layer {layer} signal '{signal}' (layers {self.layers[0]}..{self.layers[-1]}, "
                f"signals {', '.join(self.signals)})" if self.layers else f"store {self.path} is empty"
            )
        return int(self.manifest["arrays"][key]["width"])

    def _require_complete(self) -> None:
        if not self.complete:
            done, total = len(self.done_chunks()), len(self.manifest["chunks"])
            raise FuncnetError(f"activation store {self.path} is incomplete ({done}/{total} chunks); "
                               "finish it with `funcnet record ... --resume`")

    def layer(self, layer: int, signal: str = "neurons") -> np.ndarray:
        """Memory-mapped ``[tokens, width]`` array of one layer's signal (storage dtype)."""
        self.width(layer, signal)
        self._require_complete()
        key = act_name(layer, signal)
        if key not in self._arrays:
            self._arrays[key] = self._load_npy(f"acts/{key}.npy", (self.n_tokens, self.width(layer, signal)))
        return self._arrays[key]

    def _load_npy(self, rel: str, shape: tuple[int, ...] | None = None, n_rows: int | None = None) -> np.ndarray:
        """Memory-map one array of the store; a damaged file or a shape that disagrees with the manifest
        is a FuncnetError naming the file."""
        try:
            a = np.load(self.path / rel, mmap_mode="r")
        except _NPY_ERRORS as e:
            raise _damaged(self.path, rel, e) from e
        if (shape is not None and a.shape != shape) or (n_rows is not None and (a.ndim < 1 or a.shape[0] != n_rows)):
            raise FuncnetError(f"activation store {self.path} is damaged: {rel} has shape {a.shape}, the manifest "
                               f"says {shape if shape is not None else (n_rows, '...')}; record it again with --overwrite")
        return a

    def _to_float(self, a: np.ndarray) -> np.ndarray:
        if self.dtype == "bfloat16":
            return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        return np.asarray(a, dtype=np.float32)

    def layer_float(self, layer: int, signal: str = "neurons") -> np.ndarray:
        """One layer's signal as an in-memory float32 array."""
        return self._to_float(self.layer(layer, signal))

    def source(self, layers: int | Sequence[int] | None = None, signal: str = "neurons", *,
               chunk_tokens: int = 4096, documents: Sequence[int] | None = None) -> ArraySource:
        """A streamable source over the given layers (all when None), optionally restricted to documents."""
        if layers is None:
            layers = self.layers
        if isinstance(layers, (int, np.integer)):
            layers = [int(layers)]
        for l in layers:
            self.width(l, signal)
        idx = None
        if documents is not None:
            doc_ids = self.tokens["doc_ids"]
            idx = np.flatnonzero(np.isin(doc_ids, np.asarray(documents)))
            if idx.size == 0:
                raise FuncnetError(f"none of the requested documents are in store {self.path}")
        return ArraySource(self, [(int(l), signal) for l in layers], chunk_tokens, idx)

    def iter_chunks(self, layer: int, signal: str = "neurons", chunk_tokens: int = 4096) -> Iterator[np.ndarray]:
        return self.source(layer, signal, chunk_tokens=chunk_tokens).iter_chunks()

    @property
    def tokens(self) -> dict[str, np.ndarray]:
        """Per-token metadata arrays: seq_ids, doc_ids, positions, token_ids, char_spans [n, 2]."""
        if not self._tokens:
            for name in TOKEN_FIELDS:
                self._tokens[name] = self._load_npy(f"tokens/{name}.npy", n_rows=self.n_tokens)
        return self._tokens

    def document_ids(self) -> np.ndarray:
        return np.unique(np.asarray(self.tokens["doc_ids"]))

    def document_rows(self, token_index: np.ndarray | None = None) -> list[np.ndarray]:
        """Row indices of every document (in order of first appearance)."""
        doc_ids = np.asarray(self.tokens["doc_ids"])
        if token_index is not None:
            doc_ids_sel = doc_ids[token_index]
        else:
            token_index = np.arange(len(doc_ids))
            doc_ids_sel = doc_ids
        order = np.argsort(doc_ids_sel, kind="stable")
        sorted_ids = doc_ids_sel[order]
        bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
        return [token_index[g] for g in np.split(order, bounds)] if len(order) else []

    def document(self, doc_id: int, layer: int, signal: str = "neurons") -> np.ndarray:
        """float32 ``[tokens_of_doc, width]`` activations of one document."""
        rows = np.flatnonzero(np.asarray(self.tokens["doc_ids"]) == doc_id)
        if rows.size == 0:
            raise FuncnetError(f"document {doc_id} is not in store {self.path}")
        return self._to_float(self.layer(layer, signal)[rows])

    def nbytes(self) -> int:
        """Bytes of the arrays actually written: every array's header plus the rows of the finished
        chunks (the files are allocated at their final size when the store is created, so their
        apparent size overstates an unfinished store; for a finished one the two agree)."""
        done = self.done_chunks()
        tokens = sum(c.n_tokens for c in self.chunks if c.index in done)
        itemsize = np.dtype(STORAGE_DTYPES[self.dtype]).itemsize
        total = 0
        for name, a in self.manifest.get("arrays", {}).items():
            path = self.path / "acts" / f"{name}.npy"
            if path.is_file():
                try:
                    header = self._offset(path)
                except FuncnetError:  # a damaged header: reading the array will say so
                    header = 0
                total += header + tokens * int(a["width"]) * itemsize
        return total

    def summary(self) -> dict:
        m = self.manifest
        size = self.nbytes()
        return {
            "path": str(self.path), "model": m.get("model_spec"), "model_identity": m.get("model_identity"),
            "family": m.get("family"), "corpus": m.get("corpus_name"), "corpus_identity": m.get("corpus_identity"),
            "signals": self.signals, "layers": len(self.layers), "n_tokens": self.n_tokens,
            "n_documents": int(len(self.document_ids())), "dtype": self.dtype,
            "chunks_done": f"{len(self.done_chunks())}/{len(m['chunks'])}", "size_mb": round(size / 2**20, 1),
            "funcnet_version": m.get("funcnet_version"),
        }
