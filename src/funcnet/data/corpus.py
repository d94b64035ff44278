"""Text corpora: documents, corpora and their loaders (built-in, local files, WikiText-2).

Corpora
-------
``load_corpus(spec, split=, domain=, max_docs=, seed=, min_chars=)`` returns a :class:`Corpus`,
an ordered list of :class:`Document` objects. ``spec`` may be:

* ``"builtin"`` / ``"builtin:prose"`` / ``"builtin:code"`` / ``"builtin:math"``: an English corpus
  assembled deterministically from Python's standard library, needing nothing installed: prose,
  code and worked math (:mod:`funcnet.data.builtin` says how they are made), with a fixed
  calibration / evaluation split (about 80 % / 20 %) that never overlaps; ``split`` is
  ``"calib"``, ``"eval"`` or ``"all"``.
* a ``.txt`` file (one document per blank-line-separated block, or per file with
  ``per_file=True``), a ``.jsonl`` file (a ``text`` field per line), or a folder of such files
  (recursive, in sorted order). Local files are always taken whole (``split`` does not apply).
* ``"wikitext2"`` / ``"wikitext2:train"`` / ``"wikitext2:test"``: WikiText-2 (raw) through the
  optional ``datasets`` library, one document per article. Without a ``:part`` suffix, ``split``
  picks the part (``calib`` -> train, ``eval`` -> test, ``all`` -> both). Reachability is checked
  first (``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE``, then a 3 s connection to the Hub, else a
  locally cached copy), so offline this fails in a few seconds with a clear message.
* ``"debian"``: text that no part of funcnet was built or tuned on, for out-of-domain evaluation:
  the licence texts a Debian or Ubuntu system ships in ``/usr/share/common-licenses`` and the
  packages' READMEs in ``/usr/share/doc`` (plain or gzipped), one document per file (duplicates
  dropped, sorted by path, so the same system gives the same corpus); ``split`` does not apply.
* a list of strings (one document each), or an existing :class:`Corpus`.

Tokenization
------------
``tokenize(corpus, tokenizer, max_length=, mode=, max_tokens=)`` returns a :class:`TokenizedCorpus`
of :class:`TokenSequence` objects with per-token provenance (document, position, character span);
see :mod:`funcnet.data.tokenization`. The built-in texts are generated in :mod:`funcnet.data.builtin`;
their public names stay importable from here.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from funcnet.core._io import hub_reachable as _hub_reachable
from funcnet.core._io import sha256_text
from funcnet.data.builtin import BUILTIN_DOMAINS, EVAL_PERCENT, STDLIB_MODULES, _builtin_documents
from funcnet.data.tokenization import TokenizedCorpus, TokenSequence, tokenize_corpus
from funcnet.errors import FuncnetError

__all__ = [
    "Document", "Corpus", "load_corpus", "TokenSequence", "TokenizedCorpus", "tokenize",
    "BUILTIN_DOMAINS", "SPLITS", "EVAL_PERCENT", "STDLIB_MODULES",
]

SPLITS = ("calib", "eval", "all")
VALID_SPECS = (
    "'builtin', 'builtin:prose', 'builtin:code', 'builtin:math', 'wikitext2', 'wikitext2:train', "
    "'wikitext2:test', 'debian', a .txt / .jsonl file, a folder of such files, or a list of strings"
)
#: where the 'debian' corpus reads its texts (licences first, then package READMEs)
DEBIAN_ROOTS = (Path("/usr/share/common-licenses"), Path("/usr/share/doc"))


# ----------------------------------------------------------------------------------------------
# Documents and corpora
# ----------------------------------------------------------------------------------------------
@dataclass
class Document:
    """One text of a corpus.

    ``doc_id`` is the document's index in its corpus; ``source`` names where the text comes from
    (``"pydoc:topics/assert"``, ``"stdlib:json/decoder.py:JSONDecoder"``, ``"notes.txt#3"`` ...);
    ``domain`` is ``"prose"``, ``"code"``, ``"math"``, ``"file"``, ``"text"`` or ``"wikitext2"``.
    """

    text: str
    doc_id: int
    source: str
    domain: str


class Corpus:
    """An ordered, non-empty list of documents with a name and a content hash (``identity``)."""

    def __init__(self, name: str, documents: Iterable[Document]):
        docs = list(documents)
        if not docs:
            raise FuncnetError(f"corpus {name!r} is empty: it has no documents")
        # doc_id is always the index in this corpus
        self.documents: list[Document] = [
            d if d.doc_id == i else Document(d.text, i, d.source, d.domain) for i, d in enumerate(docs)
        ]
        self.name = name
        self._identity: str | None = None

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self.documents]

    @property
    def n_chars(self) -> int:
        return sum(len(d.text) for d in self.documents)

    @property
    def identity(self) -> str:
        """sha256 over the name and every text: equal corpora have equal identities across runs."""
        if self._identity is None:
            self._identity = sha256_text(self.name, *self.texts)
        return self._identity

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        return self.documents[i]

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, {len(self)} documents, {self.n_chars} chars, domains={self.domains()})"

    def subset(self, idx) -> "Corpus":
        """A new corpus of the documents at ``idx`` (ints, a boolean mask or a slice), re-indexed."""
        if isinstance(idx, slice):
            idx = range(len(self))[idx]
        arr = np.asarray(list(idx) if not isinstance(idx, np.ndarray) else idx)
        if arr.dtype == bool:
            if arr.shape != (len(self),):
                raise FuncnetError(f"boolean mask of length {arr.shape[0]} for a corpus of {len(self)} documents")
            arr = np.flatnonzero(arr)
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < -len(self) or arr.max() >= len(self)):
            raise FuncnetError(f"subset index out of range for a corpus of {len(self)} documents")
        picked = [int(i) for i in arr]
        tag = hashlib.sha256(",".join(map(str, picked)).encode()).hexdigest()[:12]
        return Corpus(f"{self.name}[subset {len(picked)}:{tag}]", [self.documents[i] for i in picked])

    def domains(self) -> list[str]:
        """Domains of the documents, in order of first appearance."""
        return list(dict.fromkeys(d.domain for d in self.documents))

    def by_domain(self, domain: str) -> "Corpus":
        """The documents of one domain (a new, re-indexed corpus)."""
        if domain not in self.domains():
            raise FuncnetError(f"unknown domain {domain!r} for corpus {self.name!r}; it has: {', '.join(self.domains())}")
        return Corpus(f"{self.name}[domain={domain}]", [d for d in self.documents if d.domain == domain])


# ----------------------------------------------------------------------------------------------
# load_corpus
# ----------------------------------------------------------------------------------------------
def load_corpus(
    spec: Any = "builtin",
    *,
    split: str = "calib",
    domain: str | None = None,
    max_docs: int | None = None,
    seed: int = 0,
    min_chars: int = 200,
    per_file: bool = False,
) -> Corpus:
    """Load a corpus; see the module docstring for the accepted ``spec`` forms.

    ``split`` ("calib", "eval", "all") applies to the built-in corpus and to ``wikitext2``;
    ``domain`` keeps one domain; ``max_docs`` keeps a random subset of that many documents
    (chosen with ``seed``, original order kept); ``min_chars`` drops built-in documents shorter
    than that; ``per_file`` makes each ``.txt`` file one document instead of one per block.
    """
    if split not in SPLITS:
        raise FuncnetError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if max_docs is not None and (not isinstance(max_docs, int) or max_docs < 1):
        raise FuncnetError(f"max_docs must be a positive integer, got {max_docs!r}")

    if isinstance(spec, Corpus):
        corpus = spec
    elif isinstance(spec, (list, tuple)):
        corpus = _corpus_from_strings(spec)
    elif isinstance(spec, (str, os.PathLike)):
        corpus = _load_spec(os.fspath(spec), split=split, domain=domain, min_chars=min_chars, per_file=per_file)
    else:
        raise FuncnetError(f"unknown corpus spec of type {type(spec).__name__}; valid forms: {VALID_SPECS}")

    if domain is not None:
        corpus = corpus.by_domain(domain)
    if max_docs is not None and max_docs < len(corpus):
        picked = sorted(random.Random(seed).sample(range(len(corpus)), max_docs))
        corpus = Corpus(f"{corpus.name}[max_docs={max_docs},seed={seed}]", [corpus.documents[i] for i in picked])
    return corpus


def _load_spec(spec: str, *, split: str, domain: str | None, min_chars: int, per_file: bool) -> Corpus:
    head, _, tail = spec.partition(":")
    if head == "builtin":
        if tail and tail not in BUILTIN_DOMAINS:
            raise FuncnetError(f"unknown domain {tail!r} in corpus spec {spec!r}; built-in domains: {', '.join(BUILTIN_DOMAINS)}")
        if tail and domain is not None and domain != tail:
            raise FuncnetError(f"unknown domain {domain!r} for corpus {spec!r}; it has: {tail}")
        if domain is not None and domain not in BUILTIN_DOMAINS:
            raise FuncnetError(f"unknown domain {domain!r}; built-in domains: {', '.join(BUILTIN_DOMAINS)}")
        return _builtin_corpus(tail or domain, split, min_chars)
    if head == "wikitext2":
        if tail and tail not in ("train", "test", "validation"):
            raise FuncnetError(f"unknown wikitext2 part {tail!r}; valid: wikitext2:train, wikitext2:test, wikitext2:validation")
        parts = [tail] if tail else {"calib": ["train"], "eval": ["test"], "all": ["train", "test"]}[split]
        return _load_wikitext2(parts)
    if head == "debian" and not tail:
        return _debian_corpus(min_chars)
    path = Path(spec).expanduser()
    if path.exists():
        return _load_path(path, per_file=per_file)
    if path.suffix in (".txt", ".jsonl") or os.sep in spec or "/" in spec:
        raise FuncnetError(f"corpus file not found: {spec}")
    raise FuncnetError(f"unknown corpus spec {spec!r}; valid forms: {VALID_SPECS}")


def _corpus_from_strings(texts: Sequence[Any]) -> Corpus:
    docs = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise FuncnetError(f"corpus list item {i} is a {type(t).__name__}, not a string")
        if t.strip():
            docs.append(Document(t, len(docs), f"list:{i}", "text"))
    if not docs:
        raise FuncnetError("corpus from a list of strings is empty: no non-blank text")
    return Corpus("list", docs)


# ---- Debian's licences and READMEs ----------------------------------------------------------------
def read_debian_text(path: Path) -> str | None:
    """One licence or README as the 'debian' corpus reads it (gzip undone, stripped), or None when it
    cannot be read as UTF-8 text."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


def _debian_corpus(min_chars: int, roots=None) -> Corpus:
    licences, docs = roots or DEBIAN_ROOTS
    if not licences.is_dir():
        raise FuncnetError(f"the 'debian' corpus needs {licences} (a Debian or Ubuntu system); "
                           "elsewhere use a local .txt file")
    files = sorted(p for p in licences.iterdir() if p.is_file())
    if docs.is_dir():
        files += sorted(p for p in docs.glob("*/README*") if p.is_file() and p.suffix in ("", ".gz", ".md", ".txt",
                                                                                          ".Debian", ".markdown"))
    seen, out = set(), []
    for f in files:
        text = read_debian_text(f)
        if text is None:
            continue  # unreadable or not UTF-8 text: not part of the corpus
        digest = hashlib.sha256(text.encode()).digest()
        if len(text) < min_chars or digest in seen:
            continue
        seen.add(digest)
        out.append(Document(text, len(out), f"debian:{f}", "debian"))
    if not out:
        raise FuncnetError(f"the 'debian' corpus found no readable text under {licences} and {docs}")
    return Corpus("debian", out)


# ---- local files ------------------------------------------------------------------------------
_FILE_SUFFIXES = (".txt", ".jsonl")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FuncnetError(f"cannot read corpus file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise FuncnetError(f"cannot read corpus file {path}: {e.strerror or e}") from None


def _file_documents(path: Path, label: str, per_file: bool) -> list[Document]:
    text = _read_text(path)
    if path.suffix == ".jsonl":
        docs = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FuncnetError(f"{path} line {lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise FuncnetError(f"{path} line {lineno}: expected an object with a string 'text' field")
            if obj["text"].strip():
                docs.append(Document(obj["text"], 0, f"{label}#line{lineno}", "file"))
        return docs
    if per_file:
        return [Document(text.strip(), 0, label, "file")] if text.strip() else []
    blocks = [b.strip() for b in re.split(r"\n[ \t\r\f\v]*\n", text)]
    return [Document(b, 0, f"{label}#{k}", "file") for k, b in enumerate(x for x in blocks if x)]


def _load_path(path: Path, *, per_file: bool) -> Corpus:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _FILE_SUFFIXES)
        if not files:
            raise FuncnetError(f"corpus folder {path} has no .txt or .jsonl files")
        docs = [d for f in files for d in _file_documents(f, f.relative_to(path).as_posix(), per_file)]
    else:
        if path.suffix not in _FILE_SUFFIXES:
            raise FuncnetError(f"unsupported corpus file type {path.suffix or '(none)'!r} for {path}: expected .txt or .jsonl")
        docs = _file_documents(path, path.name, per_file)
    if not docs:
        raise FuncnetError(f"corpus {path} is empty: no non-blank text")
    return Corpus(f"file:{path.name}", docs)


# ---- wikitext2 --------------------------------------------------------------------------------
_HEADING = re.compile(r"^ = [^=].* = $")


def _wikitext_documents(lines: Iterable[str]) -> list[str]:
    """Group WikiText lines into articles: a new article starts at each ``" = Title = "`` line."""
    articles: list[list[str]] = []
    for line in lines:
        if not line.strip():
            continue
        if _HEADING.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line.strip())
    return ["\n".join(a) for a in articles]




def _datasets_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_DATASETS_CACHE"):
        dirs.append(Path(os.environ["HF_DATASETS_CACHE"]))
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    dirs.append(Path(hf_home) / "datasets")
    return dirs


def _wikitext_cached() -> bool:
    """Whether a prepared WikiText-2 raw copy lies in the local ``datasets`` cache."""
    for d in _datasets_cache_dirs():
        if d.is_dir():
            for sub in d.iterdir():
                if "wikitext" in sub.name.lower() and any(sub.glob("wikitext-2-raw-v1*")):
                    return True
    return False


def _load_wikitext2(parts: list[str]) -> Corpus:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise FuncnetError(
            "corpus 'wikitext2' needs the optional 'datasets' library: pip install 'funcnet[datasets]' "
            "(or pip install datasets); offline, use the 'builtin' corpus or a local file"
        ) from None
    reachable = _hub_reachable()
    cached = _wikitext_cached()
    if not reachable and not cached:
        raise FuncnetError(
            "corpus 'wikitext2' is unavailable: the Hugging Face Hub is not reachable (offline?) and no cached copy "
            "was found; use the 'builtin' corpus or a local .txt/.jsonl file"
        )
    docs: list[Document] = []
    try:
        with _datasets_offline(not reachable):
            for part in parts:
                ds = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=part)
                for k, text in enumerate(_wikitext_documents(ds["text"])):
                    docs.append(Document(text, 0, f"wikitext2:{part}/{k}", "wikitext2"))
    except FuncnetError:
        raise
    except Exception as e:  # any datasets / network failure becomes one clear line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FuncnetError(f"could not load wikitext2 ({type(e).__name__}: {msg[:200]})") from None
    return Corpus(f"wikitext2:{'+'.join(parts)}", docs)


class _datasets_offline:
    """Temporarily put ``datasets`` / ``huggingface_hub`` in offline mode (to read the local cache)."""

    def __init__(self, active: bool):
        self.active = active
        self.saved: list[tuple[Any, str, Any]] = []

    def __enter__(self):
        if self.active:
            import datasets

            targets = [(datasets.config, "HF_DATASETS_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE")]
            try:
                import huggingface_hub.constants as hc

                targets.append((hc, "HF_HUB_OFFLINE"))
            except ImportError:  # pragma: no cover
                pass
            for mod, attr in targets:
                if hasattr(mod, attr):
                    self.saved.append((mod, attr, getattr(mod, attr)))
                    setattr(mod, attr, True)
        return self

    def __exit__(self, *exc):
        for mod, attr, value in self.saved:
            setattr(mod, attr, value)
        return False


# ---- built-in corpus --------------------------------------------------------------------------
def _builtin_corpus(domain: str | None, split: str, min_chars: int) -> Corpus:
    docs = [
        d for d in _builtin_documents()
        if (domain is None or d.domain == domain) and (split == "all" or d.split == split)
        and len(d.text) >= min_chars
    ]
    name = f"builtin:{domain or 'all'}:{split}" + (f":min_chars={min_chars}" if min_chars != 200 else "")
    if not docs:
        raise FuncnetError(f"corpus {name!r} is empty: no document has at least {min_chars} characters")
    return Corpus(name, [Document(d.text, i, d.source, d.domain) for i, d in enumerate(docs)])


# ----------------------------------------------------------------------------------------------
# tokenize
# ----------------------------------------------------------------------------------------------
def tokenize(
    corpus: Any,
    tokenizer: Any,
    *,
    max_length: int = 128,
    mode: str = "documents",
    max_tokens: int | None = None,
    add_special_tokens: bool = True,
) -> TokenizedCorpus:
    """Tokenize ``corpus`` (a :class:`Corpus` or anything :func:`load_corpus` accepts).

    ``mode="documents"``: one sequence per document, truncated to ``max_length``; with
    ``max_tokens`` the total stops there exactly (the last sequence is cut).
    ``mode="packed"``: EOS-separated documents cut into windows of exactly ``max_length`` tokens
    (last partial window dropped unless it is the only one); with ``max_tokens`` the number of
    windows is ``max_tokens // max_length`` (at least one).
    ``tokenizer`` may also be an object with a ``.tokenizer`` attribute (``LoadedModel``).
    See :func:`funcnet.data.tokenization.tokenize_corpus`.
    """
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    return tokenize_corpus(corpus, tokenizer, max_length=max_length, mode=mode, max_tokens=max_tokens,
                           add_special_tokens=add_special_tokens)
