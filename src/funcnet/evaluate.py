"""Metrics: token perplexity and next-token top-1 accuracy over fixed windows, and an
lm-evaluation-harness bridge.

Perplexity protocol (docs: methods.md 5.2, as in FLAP / LLM-Pruner / Wanda): the documents are
joined with ``"\\n\\n"``, tokenized once, cut into non-overlapping windows of ``window`` tokens
(the last partial window is dropped), every token after the first of each window is predicted,
and ``ppl = exp(mean token NLL)``. With ``stride < window`` windows overlap and only the tokens
not scored by the previous window count (the Hugging Face "strided perplexity" recipe).

The NLL is computed without materialising a float32 ``[batch, window, vocab]`` tensor when the
model allows it: the decoder's last hidden states go through the output head in chunks of
``logits_chunk`` tokens, each chunk's ``log_softmax`` in float32, keeping only the target log-probs
and the arg-max. Interventions (:mod:`funcnet.intervene`) apply, since their hooks live inside
the decoder layers.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from funcnet.core.progress import progress_bar
from funcnet.errors import FuncnetError
from funcnet.core.loaded import input_device, unwrap_model
from funcnet.data.corpus import load_corpus

__all__ = ["EvalResult", "perplexity", "evaluate_domains", "lm_eval_tasks"]


@dataclass
class EvalResult:
    """Token perplexity and next-token accuracy over ``n_windows`` windows of ``window`` tokens."""

    ppl: float
    nll: float  # mean token negative log-likelihood (nats)
    accuracy: float  # next-token top-1 accuracy
    n_tokens: int  # predicted tokens
    n_windows: int
    window: int
    stride: int | None = None
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.n_windows * self.window / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_s"] = self.tokens_per_s
        return d


# ------------------------------------------------------------------------------------- inputs
def _is_tokenizer(obj) -> bool:
    return obj is not None and hasattr(obj, "encode") and hasattr(obj, "decode")


def _texts_of(texts_or_corpus) -> list[str]:
    """A list of documents from a list of str, an object with ``.texts``, or a corpus spec."""
    src = texts_or_corpus
    if src is None:
        raise FuncnetError("no texts given to evaluate")
    if isinstance(src, (str, os.PathLike)):

        src = load_corpus(str(src), split="eval")
    if hasattr(src, "texts"):
        src = src.texts
    if isinstance(src, str):
        src = [src]
    try:
        texts = list(src)
    except TypeError:
        raise FuncnetError(f"cannot read texts from {type(texts_or_corpus).__name__}") from None
    if not all(isinstance(t, str) for t in texts):
        raise FuncnetError("texts must be strings")
    texts = [t for t in texts if t]
    if not texts:
        raise FuncnetError("the corpus to evaluate is empty")
    return texts


def _unwrap(model_or_loaded, tokenizer):
    """(HF model, tokenizer) from a LoadedModel or a raw model + tokenizer."""
    model, tokenizer = unwrap_model(model_or_loaded, tokenizer)
    if not _is_tokenizer(tokenizer):
        raise FuncnetError("a tokenizer is needed (pass a LoadedModel or tokenizer=)")
    return model, tokenizer


def _context_length(model) -> int | None:
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _resolve_window(model, window) -> int:
    ctx = _context_length(model)
    if window in (None, "context", "max", "model"):
        if ctx is None:
            raise FuncnetError("the model config gives no context length; pass window= explicitly")
        return ctx
    try:
        w = int(window)
    except (TypeError, ValueError):
        raise FuncnetError(f"window must be an integer or 'context', got {window!r}") from None
    if w < 2:
        raise FuncnetError(f"window must be at least 2 tokens, got {w}")
    if ctx is not None and w > ctx:
        raise FuncnetError(f"window {w} is longer than the model's context ({ctx} tokens)")
    return w


def tokenize_stream(tokenizer, texts: Sequence[str], add_special_tokens: bool = True) -> torch.Tensor:
    """The documents joined with ``"\\n\\n"`` and tokenized once, as a 1-D int64 tensor."""
    text = "\n\n".join(texts)
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_attention_mask=False, verbose=False)
    ids = enc["input_ids"]
    if ids and isinstance(ids[0], list):  # some tokenizers return a batch
        ids = ids[0]
    return torch.as_tensor(ids, dtype=torch.long)


def window_starts(n_tokens: int, window: int, stride: int | None = None) -> list[int]:
    """Start offsets of the full windows over a stream of ``n_tokens`` (last partial window dropped)."""
    stride = window if stride is None else int(stride)
    if stride < 1:
        raise FuncnetError(f"stride must be at least 1, got {stride}")
    if n_tokens < window:
        return []
    return list(range(0, n_tokens - window + 1, stride))


# ---------------------------------------------------------------------------------- NLL kernel
_SCALE_ATTRS = ("logit_scale", "logits_scaling", "output_multiplier", "mup_width_multiplier",
                "lm_head_multiplier", "logit_multiplier")


def _split_head(model) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None:
    """(decoder, head function) when logits are exactly ``head(decoder(ids).last_hidden_state)``
    (optionally soft-capped); ``None`` when unsure (then the full model is called)."""
    try:
        head = model.get_output_embeddings()
    except Exception:
        return None
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(head, nn.Linear) or not isinstance(base, nn.Module) or base is model:
        return None
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _SCALE_ATTRS):
        return None
    known = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
             "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM",
             "GPT2LMHeadModel", "GPTNeoXForCausalLM", "OPTForCausalLM"}
    if type(model).__name__ not in known:
        return None
    cap = getattr(cfg, "final_logit_softcapping", None)

    def logits_of(h: torch.Tensor) -> torch.Tensor:
        z = head(h)
        if cap:
            z = torch.tanh(z / cap) * cap
        return z

    return base, logits_of


def _score_chunks(logits_fn, hidden_or_logits: torch.Tensor, targets: torch.Tensor, score_from: int,
                  chunk: int) -> tuple[float, int, int]:
    """Sum of NLL, number of correct top-1 predictions and count for positions ``score_from:``.

    ``hidden_or_logits``: [B, T, *] for positions 0..T-1 predicting ``targets`` [B, T].
    """
    rows = max(1, int(chunk))
    nll_sum = 0.0
    correct = 0
    count = 0
    for b in range(targets.shape[0]):
        xb = hidden_or_logits[b, score_from:]
        yb = targets[b, score_from:].to(xb.device)
        for i in range(0, xb.shape[0], rows):
            z = xb[i : i + rows]
            z = logits_fn(z) if logits_fn is not None else z
            yy = yb[i : i + rows]
            logp = torch.log_softmax(z.float(), dim=-1)
            nll_sum += float(-logp.gather(1, yy[:, None]).sum(dtype=torch.float64))
            correct += int((z.argmax(dim=-1) == yy).sum())
            count += int(yy.numel())
            del z, logp
    return nll_sum, correct, count


def perplexity(
    model_or_loaded,
    tokenizer=None,
    texts_or_corpus=None,
    *,
    window: int | str = 128,
    max_windows: int | None = None,
    batch_size: int = 8,
    stride: int | None = None,
    progress: bool = True,
    add_special_tokens: bool = True,
    logits_chunk: int = 1024,
    desc: str = "perplexity",
) -> EvalResult:
    """Token perplexity and next-token top-1 accuracy over windows of ``window`` tokens.

    ``texts_or_corpus``: a list of documents, any object with ``.texts`` (a Corpus), or a corpus
    spec for :func:`funcnet.corpus.load_corpus` (evaluation split). With a LoadedModel the
    tokenizer may be omitted: ``perplexity(lm, texts)``. ``window="context"`` uses the model's
    context length. ``max_windows`` keeps the first N windows. Deterministic (no sampling,
    windows in order); runs under any active intervention.
    """
    if texts_or_corpus is None and tokenizer is not None and not _is_tokenizer(tokenizer):
        texts_or_corpus, tokenizer = tokenizer, None
    model, tokenizer = _unwrap(model_or_loaded, tokenizer)
    texts = _texts_of(texts_or_corpus)
    window = _resolve_window(model, window)
    if batch_size < 1:
        raise FuncnetError(f"batch_size must be at least 1, got {batch_size}")
    ids = tokenize_stream(tokenizer, texts, add_special_tokens=add_special_tokens)
    # A tokenizer that starts every text with BOS (Gemma) gets BOS at the start of every window, as
    # lm-eval's rolling windows do; the stream itself is cut without it. Others: plain windows.
    bos = getattr(tokenizer, "bos_token_id", None)
    prefix = None
    if add_special_tokens and bos is not None and ids.numel() and int(ids[0]) == bos:
        prefix = torch.tensor([bos], dtype=torch.long)
        ids = ids[1:]
    starts = window_starts(ids.numel(), window, stride)
    if max_windows is not None:
        if int(max_windows) < 1:
            raise FuncnetError(f"max_windows must be at least 1, got {max_windows}")
        starts = starts[: int(max_windows)]
    if not starts:
        raise FuncnetError(f"the texts give {ids.numel()} tokens, fewer than one window of {window}")
    step = window if stride is None else int(stride)
    # first logit position not scored by the previous window (with a BOS prefix, position i predicts token i)
    overlap_from = max(0, window - step - (0 if prefix is not None else 1))

    dev = input_device(model)
    split = _split_head(model)
    was_training = model.training
    model.eval()
    nll_sum, correct, count = 0.0, 0, 0
    bar = progress_bar(total=len(starts) * window, desc=desc, unit="tok", unit_scale=True, enabled=progress,
                       leave=False)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for b in range(0, len(starts), batch_size):
                bstarts = starts[b : b + batch_size]
                rows = [ids[s : s + window] if prefix is None else torch.cat([prefix, ids[s : s + window]])
                        for s in bstarts]
                batch = torch.stack(rows).to(dev)
                targets = batch[:, 1:]
                if split is not None:
                    base, head_fn = split
                    out = base(input_ids=batch, use_cache=False)
                    hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
                    x, fn = hidden[:, :-1], head_fn
                else:
                    out = model(input_ids=batch, use_cache=False)
                    x, fn = out.logits[:, :-1], None
                if b == 0 or overlap_from == 0:
                    # the first window of all scores every position; later windows skip the overlap
                    if overlap_from and b == 0:
                        parts = [(x[:1], targets[:1], 0), (x[1:], targets[1:], overlap_from)]
                    else:
                        parts = [(x, targets, 0)]
                else:
                    parts = [(x, targets, overlap_from)]
                for xx, tt, frm in parts:
                    if xx.shape[0] == 0:
                        continue
                    s, c, n = _score_chunks(fn, xx, tt, frm, logits_chunk)
                    nll_sum += s
                    correct += c
                    count += n
                del out, x
                bar.update(len(bstarts) * window)
    finally:
        bar.close()
        if was_training:
            model.train()
    seconds = time.perf_counter() - t0
    nll = nll_sum / count
    if not math.isfinite(nll):
        ppl = float("nan") if math.isnan(nll) else float("inf")
    else:
        ppl = math.exp(nll) if nll < 700 else float("inf")
    return EvalResult(ppl=ppl, nll=nll, accuracy=correct / count, n_tokens=count, n_windows=len(starts),
                      window=window, stride=None if stride is None else int(stride), seconds=seconds)


def evaluate_domains(model_or_loaded, tokenizer=None, domains: Mapping[str, Any] | None = None,
                     **kwargs) -> dict[str, EvalResult]:
    """:func:`perplexity` for each domain of ``{"prose": texts_or_corpus, ...}``."""
    if domains is None and isinstance(tokenizer, Mapping):
        domains, tokenizer = tokenizer, None
    if not domains:
        raise FuncnetError("no domains to evaluate")
    return {name: perplexity(model_or_loaded, tokenizer, texts, desc=f"ppl {name}", **kwargs)
            for name, texts in domains.items()}


# ------------------------------------------------------------------------------ lm-eval bridge
def lm_eval_tasks(model_or_loaded, tokenizer=None, tasks: str | Sequence[str] = (), limit: int | float | None = None,
                  *, batch_size: int = 8, num_fewshot: int | None = None, include_path: str | None = None,
                  max_length: int | None = None, include_defaults: bool = True, **kwargs) -> dict:
    """Run lm-evaluation-harness tasks on an (optionally intervened) model.

    Wraps the model in ``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=...)`` and
    calls ``lm_eval.simple_evaluate``; interventions active around this call apply. ``include_path``
    adds a folder of local task YAML files (``include_defaults=False``: only those, faster). Returns ``{"results": {task: metrics}, ...}`` as
    lm-eval gives it (samples dropped). Needs the optional extra: ``pip install lm-eval``.
    """
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise FuncnetError(f"lm-eval-harness is not installed ({e.name or e}): pip install lm-eval") from None
    if tokenizer is not None and not _is_tokenizer(tokenizer) and not tasks:
        tasks, tokenizer = tokenizer, None
    model, tokenizer = _unwrap(model_or_loaded, tokenizer)
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    tasks = list(tasks)
    if not tasks:
        raise FuncnetError("no lm-eval tasks given")
    hf_kw = dict(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    if max_length is not None:
        hf_kw["max_length"] = max_length
    lm = HFLM(**hf_kw)
    task_manager = kwargs.pop("task_manager", None)
    if task_manager is None and include_path is not None:
        from lm_eval.tasks import TaskManager

        task_manager = TaskManager(include_path=str(include_path), include_defaults=include_defaults)
    from lm_eval import simple_evaluate

    was_training = model.training
    try:
        out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                              task_manager=task_manager, log_samples=False, **kwargs)
    except KeyError as e:
        raise FuncnetError(f"unknown lm-eval task {e}") from None
    finally:
        model.train(was_training)
    if out is None:  # non-zero rank in distributed runs
        return {}
    out.pop("samples", None)
    return out


# ------------------------------------------------------------------------------------------ CLI
def _corpus_domains(spec: str, domain: str | None, max_docs: int | None = None) -> dict[str, list[str]]:
    """Evaluation texts per domain of a corpus spec (duck-typed on funcnet.corpus.Corpus:
    documents with ``.domain`` / ``.text``, or ``domains()`` + ``by_domain(name)``)."""

    kw: dict[str, Any] = {"split": "eval"}
    if max_docs is not None:
        kw["max_docs"] = max_docs
    if domain is not None:
        return {domain: _texts_of(load_corpus(spec, domain=domain, **kw))}
    corpus = load_corpus(spec, **kw)
    texts = _texts_of(corpus)
    docs = getattr(corpus, "documents", None)
    if docs and all(hasattr(d, "domain") and hasattr(d, "text") for d in docs):
        groups: dict[str, list[str]] = {}
        for d in docs:
            if d.text:
                groups.setdefault(str(d.domain), []).append(d.text)
        return groups
    names = getattr(corpus, "domains", None)
    names = names() if callable(names) else names
    if names is not None:
        names = list(names)
        by = getattr(corpus, "by_domain", None)
        if len(names) == len(corpus.texts) and not callable(by):  # one domain label per document
            groups = {}
            for d, t in zip(names, corpus.texts):
                if t:
                    groups.setdefault(str(d), []).append(t)
            return groups
        if callable(by) and names:
            return {str(d): _texts_of(by(d)) for d in names}
    return {"all": texts}


