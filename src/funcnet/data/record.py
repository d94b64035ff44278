"""Recording neuron activations: hooks from the architecture adapter, batched forward passes of the
base model (no LM head), padding excluded, streamed to an :class:`~funcnet.store.ActivationStore`.

``record`` writes a resumable store on disk; ``collect`` returns small recordings in memory.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from funcnet._defaults import STORE_DTYPE
from funcnet._version import __version__
from funcnet.core._io import check_output, protected_reason
from funcnet.core.adapters import SIGNALS
from funcnet.core.forward import forward_batches, iter_batches
from funcnet.core.models import LoadedModel, as_loaded
from funcnet.core.progress import progress_bar
from funcnet.data.corpus import load_corpus, tokenize
from funcnet.data.store import STORAGE_DTYPES, ActivationStore, plan_chunks, store_owned
from funcnet.errors import FuncnetError

RESUME_KEYS = ("model_identity", "tokenized_identity", "signals", "layers", "dtype", "chunk_tokens")


class _StopForward(Exception):
    """Raised by a hook after the last needed layer to skip the rest of the forward pass."""


def parse_layers(layers, n_layers: int) -> list[int]:
    """'all', an int, '3', '0-5', '0,3,-1', or a list -> sorted unique layer indices."""
    if layers is None or (isinstance(layers, str) and layers.strip().lower() in ("all", "")):
        return list(range(n_layers))
    if isinstance(layers, (int, np.integer)):
        items = [int(layers)]
    elif isinstance(layers, str):
        items = []
        for part in layers.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)-(\d+)", part)
            try:
                items.extend(range(int(m[1]), int(m[2]) + 1) if m else [int(part)])
            except ValueError:
                raise FuncnetError(f"cannot read layers '{layers}': use all, 0-5, or 0,3,-1") from None
    else:
        items = [int(x) for x in layers]
    out = []
    for i in items:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise FuncnetError(f"layer {i} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
        out.append(j)
    if not out:
        raise FuncnetError("no layers selected")
    return sorted(set(out))


def parse_signals(signals) -> list[str]:

    if isinstance(signals, str):
        signals = [s.strip() for s in signals.split(",") if s.strip()]
    signals = list(dict.fromkeys(signals))
    bad = [s for s in signals if s not in SIGNALS]
    if bad or not signals:
        raise FuncnetError(f"unknown signal(s) {', '.join(bad) or '(none)'}; choose from {', '.join(SIGNALS)}")
    return signals


def _tokenized(corpus, tokenizer, *, max_length: int, mode: str, max_tokens: int | None, split: str):
    """Accept a TokenizedCorpus, a Corpus, a spec string or a list of strings."""
    if hasattr(corpus, "sequences") and hasattr(corpus, "batches"):
        return corpus

    if not hasattr(corpus, "documents"):
        corpus = load_corpus(corpus, split=split)
    return tokenize(corpus, tokenizer, max_length=max_length, mode=mode, max_tokens=max_tokens)


def _token_meta(tok) -> dict[str, np.ndarray]:
    seqs = tok.sequences
    cat = lambda f: np.concatenate([np.asarray(getattr(s, f)) for s in seqs]) if seqs else np.zeros(0)  # noqa: E731
    return {
        "seq_ids": np.concatenate([np.full(len(s.input_ids), i, np.int32) for i, s in enumerate(seqs)]),
        "doc_ids": cat("doc_ids").astype(np.int32),
        "positions": cat("positions").astype(np.int32),
        "token_ids": cat("input_ids").astype(np.int64),
        "char_spans": np.concatenate([np.asarray(s.char_spans, dtype=np.int64).reshape(-1, 2) for s in seqs]),
    }


#: the largest finite value of each 16-bit storage dtype
_DTYPE_MAX = {"float16": 65504.0, "bfloat16": float(torch.finfo(torch.bfloat16).max)}
#: below this |value| the cast cannot overflow (float16 rounds 65,504 <= |x| < 65,520 down to 65,504)
_SAFE_BELOW = {"float16": 65520.0, "bfloat16": float(torch.finfo(torch.bfloat16).max)}


class StoreOverflowError(FuncnetError):
    """Activations too large for the store's dtype (float16 stops at 65,504)."""


def _below(t: torch.Tensor, limit: float) -> bool:
    """True when every value of ``t`` is finite and below ``limit`` in magnitude (one pass, no copy;
    False for NaN / inf, which the caller then checks element by element)."""
    lo, hi = torch.aminmax(t)
    return bool(max(-float(lo), float(hi)) < limit)


def _to_storage(t: torch.Tensor, dtype: str, layer: int | None = None, signal: str | None = None) -> np.ndarray:
    """Rows in the storage dtype; a finite value that the cast to float16 / bfloat16 turns into an
    infinity is a :class:`StoreOverflowError` naming the layer, the signal and the largest value."""
    t = t.detach()
    target = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    # a cast to another 16-bit dtype is checked; the range check runs where the values are (on a GPU
    # it costs nothing), before the copy to the host
    safe = target is None or t.dtype == target or t.numel() == 0 or _below(t, _SAFE_BELOW[dtype])
    t = t.to("cpu")
    if target is not None:
        c = t.to(target)
        if not safe and not bool(torch.isfinite(c).all()):
            fin = torch.isfinite(t)
            if bool((fin & ~torch.isfinite(c)).any()):
                top = float(t[fin].abs().max())
                where = f"layer {layer} ({signal})" if layer is not None else "a recorded signal"
                wider = "bfloat16 (or float32)" if dtype == "float16" else "float32"
                raise StoreOverflowError(
                    f"activations of {where} reach {top:,.0f}, past {dtype}'s largest value {_DTYPE_MAX[dtype]:,.0f}; "
                    f"record again with --store-dtype {wider} and --overwrite (Python: store_dtype=)")
        return c.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else c.numpy()
    return t.to(torch.float32).numpy()


def _run_capture(
    lm: LoadedModel,
    tok,
    keys: Sequence[tuple[int, str]],
    chunks,
    *,
    batch_size: int,
    dtype: str,
    sink: Callable[[int, str, int, np.ndarray], None],
    on_chunk_done: Callable[[int], None] | None = None,
    skip: Iterable[int] = (),
    progress: bool = True,
    desc: str = "recording",
) -> float:
    """Run the model over the chunks' sequences; call ``sink(layer, signal, token_offset, rows)``."""
    model, adapter = lm.model, lm.adapter
    layers = adapter.get_layers(model)
    state: dict = {}
    handles = []

    def make_cb(layer_idx: int, signal: str):
        def cb(t: torch.Tensor):
            mask = state["mask"]
            if mask.device != t.device:
                mask = mask.to(t.device)
            rows = t[mask] if t.dim() == 3 else t.reshape(mask.shape + t.shape[-1:])[mask]
            # handed to the sink as soon as the layer produces it: the host holds one layer's rows of a
            # batch at a time, not the batch's rows of every layer
            sink(layer_idx, signal, state["offset"], _to_storage(rows, dtype, layer_idx, signal))
            state["seen"].add((layer_idx, signal))
        return cb

    last = max(l for l, _ in keys)
    try:
        for l, s in keys:
            handles.append(adapter.register_signal_hook(layers[l], s, make_cb(l, s)))
        if last < len(layers) - 1:
            def stop(m, a, o):
                raise _StopForward
            handles.append(layers[last].register_forward_hook(stop))
        pad = lm.tokenizer.pad_token_id if lm.tokenizer is not None and lm.tokenizer.pad_token_id is not None else 0
        skip = set(skip)
        todo = [c for c in chunks if c.index not in skip]
        total = sum(c.n_tokens for c in todo)
        t0 = time.perf_counter()
        bar = progress_bar(total=total, unit="tok", unit_scale=True, desc=desc, enabled=progress)

        def before(batch):
            state["mask"], state["seen"] = batch[1].bool(), set()

        for chunk in todo:
            state["offset"] = chunk.tok_start
            seqs = [tok.sequences[i].input_ids for i in range(chunk.seq_start, chunk.seq_stop)]
            for _ids, mask, _idx in forward_batches(model, iter_batches(seqs, batch_size, pad), before=before,
                                                    stop=_StopForward):
                n = int(mask.sum())
                for (l, s) in keys:
                    if (l, s) not in state["seen"]:
                        raise FuncnetError(f"layer {l} signal '{s}' was not produced by the forward pass")
                state["offset"] += n
                bar.update(n)
            if on_chunk_done is not None:
                on_chunk_done(chunk.index)
        bar.close()
        return time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()


def _check_positive(**values) -> None:
    for name, v in values.items():
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
            raise FuncnetError(f"{name} must be a positive whole number, got {v!r}")


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Before any work: where the store goes, and whether an existing folder there may be continued
    or replaced (only a store funcnet wrote, holding nothing else)."""
    why = protected_reason(out)
    if why is not None:
        raise FuncnetError(f"store folder '{out}' is {why}; choose a new folder for --out")
    if out.exists() and not out.is_dir():
        raise FuncnetError(f"--out '{out}' is a file; choose a folder")
    if not out.exists() or not any(out.iterdir()):
        check_output(out, overwrite=True, what="store folder")  # writability
        return
    reason = store_owned(out)
    complete = (out / "manifest.json").exists()
    if complete and resume:
        return
    if reason is not None:
        raise FuncnetError(f"will not write into '{out}': {reason}")
    if not complete and not (out / ".incomplete").exists() and not overwrite:
        # not an interrupted creation (that leaves .incomplete): the store lost its manifest
        raise FuncnetError(f"activation store '{out}' is incomplete or damaged (its manifest.json is missing); "
                           f"record it again with `funcnet record ... --out {out} --overwrite`")
    if complete and not overwrite:
        raise FuncnetError(f"activation store {out} already exists; pass --resume to continue it or --overwrite")
    check_output(out, overwrite=True, what="store folder", owned=store_owned)


def record(
    model,
    corpus="builtin",
    *,
    out: str | os.PathLike,
    signals=("neurons",),
    layers="all",
    tokenizer=None,
    split: str = "calib",
    max_tokens: int | None = None,
    max_length: int = 128,
    mode: str = "documents",
    batch_size: int = 8,
    chunk_tokens: int = 2048,
    store_dtype: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    dtype: str | None = None,
) -> ActivationStore:
    """Record ``signals`` of ``layers`` over ``corpus`` into an activation store at ``out``.

    ``model`` is a spec (a :class:`funcnet.core.models.ModelSpec` carries loading options such as the
    model's dtype and device map), a :class:`LoadedModel` or an HF model (then pass ``tokenizer``);
    ``corpus`` a spec, a Corpus, a TokenizedCorpus or a list of strings. ``store_dtype``: how the store
    keeps the values, ``float16`` (default here; ``funcnet record`` defaults to ``bfloat16``),
    ``bfloat16`` or ``float32``; values that would overflow float16 (|x| > 65,504) stop the recording
    with a :class:`StoreOverflowError`, the store left incomplete (docs/recording.md). ``dtype`` is the
    old name of ``store_dtype`` (deprecated). With ``resume=True`` an interrupted recording continues at
    its first unfinished chunk (refused if model or corpus differ).
    """
    store_dtype = _store_dtype(store_dtype, dtype)
    dtype = store_dtype
    out = Path(out)
    _check_positive(batch_size=batch_size, max_length=max_length, chunk_tokens=chunk_tokens,
                    max_tokens=max_tokens)
    sig = parse_signals(signals)
    _check_out(out, resume=resume, overwrite=overwrite)
    lm = as_loaded(model, tokenizer)
    lay = parse_layers(layers, lm.n_layers)
    tok = _tokenized(corpus, lm.tokenizer, max_length=max_length, mode=mode, max_tokens=max_tokens, split=split)
    if tok.n_tokens == 0:
        raise FuncnetError("the corpus has no tokens to record")
    keys = [(l, s) for l in lay for s in sig]
    widths = {(l, s): lm.adapter.signal_width(lm.model, l, s) for l, s in keys}
    chunks = plan_chunks([len(s.input_ids) for s in tok.sequences], chunk_tokens)
    corpus_obj = getattr(tok, "corpus", None)
    manifest = {
        "funcnet_version": __version__,
        "model_spec": lm.spec,
        "model_identity": lm.identity,
        "family": lm.adapter.family,
        "n_layers": lm.n_layers,
        "signals": sig,
        "layers": lay,
        "corpus_name": getattr(corpus_obj, "name", None),
        "corpus_identity": getattr(corpus_obj, "identity", None),
        "tokenized_identity": tok.identity,
        "max_length": getattr(tok, "max_length", max_length),
        "mode": getattr(tok, "mode", mode),
        "chunk_tokens": int(chunk_tokens),
        "model_dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        "chunks": [[c.index, c.seq_start, c.seq_stop, c.tok_start, c.tok_stop] for c in chunks],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    store = None
    if out.exists() and (out / "manifest.json").exists():
        if resume:
            store = ActivationStore.open(out)
            wanted = dict(manifest, dtype=dtype)
            for k in RESUME_KEYS:
                if store.manifest.get(k) != wanted.get(k):
                    what = {"model_identity": "model", "tokenized_identity": "corpus"}.get(k, k)
                    raise FuncnetError(
                        f"cannot resume {out}: it was recorded with a different {what} "
                        f"({store.manifest.get(k)!r} vs {wanted.get(k)!r}); use a new --out or --overwrite"
                    )
        else:  # --overwrite (checked by _check_out: funcnet's own store, nothing else in it)
            shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):  # an interrupted creation, or --overwrite: funcnet's own
        shutil.rmtree(out)
    if store is None:
        store = ActivationStore.create(out, manifest, _token_meta(tok), widths, dtype=dtype)

    done = store.done_chunks()
    _run_capture(
        lm, tok, keys, chunks, batch_size=batch_size, dtype=dtype,
        sink=lambda l, s, off, rows: store.write_rows(l, s, off, rows),
        on_chunk_done=store.mark_done, skip=done, progress=progress,
    )
    return store


def _store_dtype(store_dtype: str | None, dtype: str | None) -> str:
    """``store_dtype``, or the deprecated ``dtype`` (the store's dtype under its old name)."""
    if dtype is not None:
        warnings.warn("record(dtype=...) is the activation store's dtype: pass store_dtype= (dtype= will go)",
                      DeprecationWarning, stacklevel=3)
        if store_dtype is not None and store_dtype != dtype:
            raise FuncnetError(f"store_dtype={store_dtype!r} and dtype={dtype!r} disagree; pass store_dtype only")
        store_dtype = dtype
    store_dtype = STORE_DTYPE if store_dtype is None else store_dtype
    if store_dtype not in STORAGE_DTYPES:
        raise FuncnetError(f"unknown store dtype '{store_dtype}'; choose from {', '.join(STORAGE_DTYPES)}")
    return store_dtype


def collect(
    model,
    corpus,
    *,
    signals=("neurons",),
    layers="all",
    tokenizer=None,
    split: str = "calib",
    max_tokens: int | None = None,
    max_length: int = 128,
    mode: str = "documents",
    batch_size: int = 8,
    dtype: str = "float32",
    progress: bool = False,
) -> dict[tuple[int, str], np.ndarray]:
    """Record in memory: returns ``{(layer, signal): array[tokens, width]}`` (small jobs and tests)."""
    lm = as_loaded(model, tokenizer)
    sig = parse_signals(signals)
    lay = parse_layers(layers, lm.n_layers)
    tok = _tokenized(corpus, lm.tokenizer, max_length=max_length, mode=mode, max_tokens=max_tokens, split=split)
    keys = [(l, s) for l in lay for s in sig]
    parts: dict[tuple[int, str], list[np.ndarray]] = {k: [] for k in keys}
    chunks = plan_chunks([len(s.input_ids) for s in tok.sequences], 1 << 62)
    _run_capture(lm, tok, keys, chunks, batch_size=batch_size, dtype=dtype,
                 sink=lambda l, s, off, rows: parts[(l, s)].append(rows), progress=progress, desc="collecting")
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


