"""Text corpora and their tokenization, with every token traced back to its source characters.

Corpora
-------
``load_corpus(spec, split=, domain=, max_docs=, seed=, min_chars=)`` returns a :class:`Corpus`,
an ordered list of :class:`Document` objects. ``spec`` may be:

* ``"builtin"`` / ``"builtin:prose"`` / ``"builtin:code"`` / ``"builtin:math"``: an English corpus
  assembled deterministically from Python's standard library, needing nothing installed:

  - *prose*: the language-reference topics of ``pydoc_data.topics`` (long topics cut into
    paragraph-bounded pieces of about 1500-3000 characters) and the docstrings of a fixed list
    of pure-Python standard-library modules (read from their source with :mod:`ast`, nothing is
    imported);
  - *code*: the source of the same modules, cut into top-level ``def`` / ``class`` chunks
    (long classes and functions are cut further at the boundaries of their body statements);
  - *math*: synthetic arithmetic, algebra and word problems with worked answers, generated with
    a fixed-seed ``random.Random``.

  A fixed calibration / evaluation split (about 80 % / 20 %) never overlaps: prose pieces are
  assigned by a stable hash of their source key; docstrings and code chunks by the hash of the
  top-level object they belong to (so a function's docstring and its code always land in the
  same split); math problems of the evaluation split come from another generator seed and skip
  any question already in the calibration split. ``split`` is ``"calib"``, ``"eval"`` or ``"all"``.
* a ``.txt`` file (one document per blank-line-separated block, or per file with
  ``per_file=True``), a ``.jsonl`` file (a ``text`` field per line), or a folder of such files
  (recursive, in sorted order). Local files are always taken whole (``split`` does not apply).
* ``"wikitext2"`` / ``"wikitext2:train"`` / ``"wikitext2:test"``: WikiText-2 (raw) through the
  optional ``datasets`` library, one document per article. Without a ``:part`` suffix, ``split``
  picks the part (``calib`` -> train, ``eval`` -> test, ``all`` -> both). Reachability is checked
  first (``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE``, then a 3 s connection to the Hub, else a
  locally cached copy), so offline this fails in a few seconds with a clear message.
* a list of strings (one document each), or an existing :class:`Corpus`.

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
"""
from __future__ import annotations

import ast
import gc
import hashlib
import json
import math
import os
import random
import re
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from funcnet.core._io import hub_reachable as _hub_reachable
from funcnet.core._io import sha256_text
from funcnet.errors import FuncnetError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "Document", "Corpus", "load_corpus", "TokenSequence", "TokenizedCorpus", "tokenize",
    "BUILTIN_DOMAINS", "SPLITS",
]

BUILTIN_DOMAINS = ("prose", "code", "math")
SPLITS = ("calib", "eval", "all")
VALID_SPECS = (
    "'builtin', 'builtin:prose', 'builtin:code', 'builtin:math', 'wikitext2', 'wikitext2:train', "
    "'wikitext2:test', a .txt / .jsonl file, a folder of such files, or a list of strings"
)
#: Fraction of the built-in prose / code documents (by stable hash) in the evaluation split.
EVAL_PERCENT = 20
_SPLIT_SALT = "funcnet-split-v1"
#: Paragraph-bounded piece sizes for long pydoc topics, in characters.
_PIECE_MIN, _PIECE_MAX = 1500, 3000
#: Code chunks longer than this are cut at the boundaries of their body statements.
_CODE_MAX = 3000
#: Number of math documents (problem sets) per split, and the generator seeds.
_MATH_DOCS = {"calib": 480, "eval": 120}
_MATH_SEEDS = {"calib": 20240601, "eval": 20240602}

#: Pure-Python standard-library modules whose docstrings (prose) and source (code) are used.
#: Paths are relative to the standard-library folder, as ``a/b`` for ``a/b.py`` or ``a/b/__init__.py``.
STDLIB_MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "cmd", "collections", "colorsys",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "difflib", "enum", "fnmatch",
    "fractions", "functools", "getopt", "gettext", "glob", "heapq", "hmac", "html", "html/parser",
    "inspect", "ipaddress", "json", "json/decoder", "json/encoder", "linecache", "logging",
    "mimetypes", "numbers", "optparse", "pathlib", "pprint", "queue", "random", "sched",
    "secrets", "selectors", "shlex", "shutil", "statistics", "string", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "traceback", "typing", "urllib/parse", "uuid",
    "warnings", "weakref", "zipfile",
)


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
def _split_of(key: str) -> str:
    h = int(hashlib.sha256(f"{_SPLIT_SALT}:{key}".encode()).hexdigest()[:8], 16)
    return "eval" if h % 100 < EVAL_PERCENT else "calib"


@dataclass(frozen=True)
class _BuiltinDoc:
    text: str
    source: str
    domain: str
    split: str


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


@lru_cache(maxsize=1)
def _builtin_documents() -> tuple[_BuiltinDoc, ...]:
    """Every built-in document (all domains, both splits), deduplicated by text, in fixed order."""
    prose_topics = _pydoc_documents()
    # parsing ~2 MB of source creates millions of AST objects: with a large heap (torch loaded)
    # the cyclic garbage collector would rescan it again and again (4 s instead of 0.5 s)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        modules = _stdlib_modules()
        docstrings = [d for m in modules for d in _docstring_documents(*m)]
        code = [d for m in modules for d in _code_documents(*m)]
        del modules
    finally:
        if gc_was_enabled:
            gc.enable()
    seen: set[str] = set()
    out = []
    for d in [*prose_topics, *docstrings, *code, *_math_documents()]:
        if d.text not in seen:
            seen.add(d.text)
            out.append(d)
    return tuple(out)


def _paragraph_pieces(text: str) -> list[str]:
    """Cut ``text`` at blank lines into pieces of about ``_PIECE_MIN``-``_PIECE_MAX`` characters."""
    if len(text) <= _PIECE_MAX:
        return [text]
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    cur = ""
    for p in paragraphs:
        if cur and len(cur) >= _PIECE_MIN and len(cur) + len(p) + 2 > _PIECE_MAX:
            pieces.append(cur)
            cur = p
        else:
            cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        if pieces and len(cur) < _PIECE_MIN // 3:
            pieces[-1] = f"{pieces[-1]}\n\n{cur}"
        else:
            pieces.append(cur)
    return pieces


def _pydoc_documents() -> list[_BuiltinDoc]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Python builds
        return []
    docs = []
    for name in sorted(topics):
        pieces = _paragraph_pieces(topics[name].strip())
        for k, piece in enumerate(pieces):
            source = f"pydoc:topics/{name}" + (f"#{k}" if len(pieces) > 1 else "")
            docs.append(_BuiltinDoc(piece, source, "prose", _split_of(source)))
    return docs


def _stdlib_modules() -> list[tuple[str, str, str, ast.Module]]:
    """(dotted name, relative path, source, parsed tree) of every available module of STDLIB_MODULES."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for rel in STDLIB_MODULES:
        for cand in (root / f"{rel}.py", root / rel / "__init__.py"):
            if cand.is_file():
                try:
                    source = cand.read_text(encoding="utf-8")
                    tree = ast.parse(source)
                except (OSError, SyntaxError, UnicodeDecodeError):  # pragma: no cover
                    break
                out.append((rel.replace("/", "."), cand.relative_to(root).as_posix(), source, tree))
                break
    return out


def _object_key(module: str, name: str | None) -> str:
    """Split key shared by the docstrings and the code of one top-level object."""
    return f"stdlib:{module}" + (f":{name}" if name else "")


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _docstring_documents(module: str, rel: str, source: str, tree: ast.Module) -> list[_BuiltinDoc]:
    docs = []

    def add(node, qualname: str, top: str | None):
        doc = ast.get_docstring(node, clean=True)
        if doc and doc.strip():
            docs.append(_BuiltinDoc(doc.strip(), f"docstring:{qualname}", "prose", _split_of(_object_key(module, top))))

    add(tree, module, None)
    for node in tree.body:
        if isinstance(node, _DEFS) and not node.name.startswith("_"):
            add(node, f"{module}.{node.name}", node.name)
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, _DEFS) and not sub.name.startswith("_"):
                        add(sub, f"{module}.{node.name}.{sub.name}", node.name)
    return docs


def _node_start(node: ast.stmt) -> int:
    """First line of a statement, decorators included (1-based)."""
    decos = getattr(node, "decorator_list", None) or []
    return min([node.lineno, *(d.lineno for d in decos)])


def _split_long(node: ast.stmt, lines: list[str], start: int, end: int) -> list[str]:
    """Cut lines ``start..end`` (1-based, inclusive) of a long def/class at its body statements."""
    body = getattr(node, "body", [])
    cuts = [_node_start(s) for s in body[1:]] if len(body) > 1 else []
    bounds = [start, *[c for c in cuts if start < c <= end], end + 1]
    segments = ["".join(lines[a - 1:b - 1]) for a, b in zip(bounds[:-1], bounds[1:])]
    pieces: list[str] = []
    cur = ""
    for seg in segments:
        if cur and len(cur) + len(seg) > _CODE_MAX:
            pieces.append(cur)
            cur = seg
        else:
            cur += seg
    if cur:
        pieces.append(cur)
    return pieces


def _code_documents(module: str, rel: str, source: str, tree: ast.Module) -> list[_BuiltinDoc]:
    lines = source.splitlines(keepends=True)
    # group the top-level statements: each def/class alone, runs of other statements together
    groups: list[tuple[str | None, list[ast.stmt]]] = []
    for node in tree.body:
        if isinstance(node, _DEFS):
            groups.append((node.name, [node]))
        elif groups and groups[-1][0] is None:
            groups[-1][1].append(node)
        else:
            groups.append((None, [node]))
    docs = []
    prev_end = 0
    for name, nodes in groups:
        end = nodes[-1].end_lineno or nodes[-1].lineno
        start = prev_end + 1  # leading comments and blank lines belong to the following chunk
        prev_end = end
        text = "".join(lines[start - 1:end])
        if name is not None and len(text) > _CODE_MAX:
            pieces = _split_long(nodes[0], lines, start, end)
        else:
            pieces = [text]
        label = f"stdlib:{rel}" + (f":{name}" if name else f":L{_node_start(nodes[0])}")
        for k, piece in enumerate(pieces):
            piece = piece.strip("\n").rstrip()
            if piece.strip():
                source_key = label + (f"#{k}" if len(pieces) > 1 else "")
                docs.append(_BuiltinDoc(piece, source_key, "code", _split_of(_object_key(module, name))))
    return docs


# ---- synthetic math ---------------------------------------------------------------------------
_NAMES = ("Maria", "Ahmed", "Lena", "Tom", "Priya", "Kenji", "Sofia", "David", "Amara", "Lucas",
          "Chen", "Olivia", "Mateo", "Fatima", "Noah", "Elena", "Sam", "Yuki", "Omar", "Grace")
_ITEMS = (("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("ticket", "tickets"),
          ("book", "books"), ("sandwich", "sandwiches"), ("candle", "candles"), ("plant", "plants"),
          ("mug", "mugs"), ("puzzle", "puzzles"))
_VEHICLES = ("car", "train", "bicycle", "bus", "boat")


def _math_problem(rng: random.Random) -> tuple[str, str]:
    """One (question, worked answer) pair."""
    kind = rng.randrange(10)
    if kind == 0:  # multiplication with the distributive law
        a, b = rng.randint(12, 99), rng.randint(11, 99)
        t, u = divmod(b, 10)
        q = f"What is {a} * {b}?"
        ans = f"{a} * {b} = {a} * {t * 10} + {a} * {u} = {a * t * 10} + {a * u} = {a * b}."
    elif kind == 1:  # addition / subtraction
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        if rng.random() < 0.5:
            q, ans = f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
        else:
            a, b = max(a, b), min(a, b)
            q, ans = f"What is {a} - {b}?", f"{a} - {b} = {a - b}."
    elif kind == 2:  # division with remainder
        b = rng.randint(3, 19)
        a = b * rng.randint(5, 90) + rng.randint(0, b - 1)
        qt, r = divmod(a, b)
        q = f"What is {a} divided by {b}?"
        ans = (f"{b} * {qt} = {b * qt}, and {a} - {b * qt} = {r}. So {a} / {b} = {qt}"
               + (f" remainder {r}." if r else " exactly."))
    elif kind == 3:  # order of operations
        a, b, c, d = rng.randint(2, 30), rng.randint(2, 9), rng.randint(5, 20), rng.randint(1, 4)
        q = f"Compute {a} + {b} * ({c} - {d})."
        ans = (f"First the parentheses: {c} - {d} = {c - d}. Then the multiplication: {b} * {c - d} = "
               f"{b * (c - d)}. Then the addition: {a} + {b * (c - d)} = {a + b * (c - d)}. The answer is "
               f"{a + b * (c - d)}.")
    elif kind == 4:  # linear equation
        x, a, b = rng.randint(-12, 20), rng.randint(2, 12), rng.randint(1, 40)
        c = a * x + b
        q = f"Solve for x: {a}x + {b} = {c}."
        ans = (f"Subtract {b} from both sides: {a}x = {c - b}. Divide both sides by {a}: x = {x}. "
               f"Check: {a} * {x} + {b} = {c}.")
    elif kind == 5:  # shopping word problem
        name = rng.choice(_NAMES)
        (s1, p1), (s2, _p2) = rng.sample(_ITEMS, 2)
        n, price, extra = rng.randint(2, 9), rng.randint(2, 15), rng.randint(1, 20)
        paid = 10 * math.ceil((n * price + extra + 1) / 10)
        q = (f"{name} buys {n} {p1} at ${price} each and one {s2} for ${extra}, and pays with ${paid}. "
             f"How much change does {name} get?")
        total = n * price + extra
        ans = (f"The {p1} cost {n} * {price} = {total - extra} dollars. With the {s2}: {total - extra} + {extra} = "
               f"{total} dollars. The change is {paid} - {total} = {paid - total} dollars.")
    elif kind == 6:  # speed, distance, time
        name, v = rng.choice(_NAMES), rng.choice(_VEHICLES)
        speed, hours = rng.randint(8, 120), rng.randint(2, 9)
        q = f"{name}'s {v} travels at {speed} km per hour for {hours} hours. How far does it go?"
        ans = f"Distance = speed * time = {speed} * {hours} = {speed * hours} km."
    elif kind == 7:  # percentages
        p, base = rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 75)), rng.randint(2, 60) * 20
        val = p * base // 100
        q = f"What is {p}% of {base}?"
        ans = f"{p}% of {base} = {p}/100 * {base} = {p * base}/100 = {val}."
    elif kind == 8:  # fractions
        g = rng.randint(2, 12)
        a, b = rng.randint(1, 11), rng.randint(2, 13)
        while math.gcd(a, b) != 1 or a == b:
            a, b = rng.randint(1, 11), rng.randint(2, 13)
        q = f"Simplify the fraction {a * g}/{b * g}."
        ans = (f"The greatest common divisor of {a * g} and {b * g} is {g}. Dividing both by {g}: "
               f"{a * g}/{b * g} = {a}/{b}.")
    else:  # prime factorization or average
        if rng.random() < 0.5:
            n = rng.randint(24, 600)
            steps: list[str] = []
            m, f, factors = n, 2, []
            while m > 1:
                while m % f == 0:
                    factors.append(f)
                    m //= f
                    step = " * ".join(map(str, factors)) + (f" * {m}" if m > 1 else "")
                    if not steps or steps[-1] != step:
                        steps.append(step)
                f += 1
            q = f"Write {n} as a product of prime numbers."
            if len(factors) == 1:
                ans = f"{n} has no divisor between 2 and {math.isqrt(n)}, so {n} is itself a prime number."
            else:
                ans = f"{n} = " + " = ".join(steps) + "."
        else:
            vals = [rng.randint(40, 100) for _ in range(rng.randint(3, 6))]
            name = rng.choice(_NAMES)
            q = f"{name}'s test scores are {', '.join(map(str, vals))}. What is the average score?"
            s = sum(vals)
            avg = s / len(vals)
            avg_s = f"{avg:g}" if avg == round(avg, 2) else f"{avg:.2f} (rounded)"
            ans = f"The sum is {' + '.join(map(str, vals))} = {s}. There are {len(vals)} scores, so the average is {s} / {len(vals)} = {avg_s}."
    return q, ans


def _math_documents() -> list[_BuiltinDoc]:
    """Problem sets of 4-8 problems each; no question of the eval split appears in calib."""
    docs = []
    seen: set[str] = set()
    for split in ("calib", "eval"):
        rng = random.Random(_MATH_SEEDS[split])
        for k in range(_MATH_DOCS[split]):
            problems: list[str] = []
            n_problems = rng.randint(4, 8)
            while len(problems) < n_problems:
                q, a = _math_problem(rng)
                if q in seen:
                    continue
                seen.add(q)
                problems.append(f"Q: {q}\nA: {a}")
            docs.append(_BuiltinDoc("\n\n".join(problems), f"math:{split}/{k}", "math", split))
    return docs


# ----------------------------------------------------------------------------------------------
# Tokenization
# ----------------------------------------------------------------------------------------------
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

    def __init__(self, sequences: list[TokenSequence], corpus: Corpus, *, max_length: int, mode: str,
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
        ``[batch, longest sequence of the batch]``; padding has mask 0 and id ``pad_token_id``.
        """
        import torch

        if batch_size < 1:
            raise FuncnetError(f"batch_size must be at least 1, got {batch_size}")
        pad = 0 if pad_token_id is None else int(pad_token_id)
        for lo in range(0, len(self.sequences), batch_size):
            idx = list(range(lo, min(lo + batch_size, len(self.sequences))))
            width = max(len(self.sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(self.sequences[i])
                ids[r, :n] = torch.from_numpy(self.sequences[i].input_ids)
                mask[r, :n] = 1
            yield ids, mask, idx


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


def _iter_encoded(tokenizer, corpus: Corpus, add_special_tokens: bool, special: set[int], chunk: int = 64):
    """Yield (doc_id, ids, spans) lazily, tokenizing ``chunk`` documents at a time."""
    docs = corpus.documents
    for lo in range(0, len(docs), chunk):
        part = docs[lo:lo + chunk]
        for d, (ids, spans) in zip(part, _encode(tokenizer, [d.text for d in part], add_special_tokens, special)):
            yield d.doc_id, ids, spans


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
    """
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
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
    for doc_id, ids, spans in _iter_encoded(tokenizer, corpus, add_special_tokens, special):
        # a document whose only tokens are special tokens has no tokens of its own: skip it
        if ids.size == 0 or np.isin(ids, list(special)).all():
            continue
        n = min(len(ids), max_length)
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

