"""The built-in offline corpus: English prose, Python code and worked math, assembled deterministically
from Python's standard library, needing nothing installed (``load_corpus("builtin[:domain]")``).

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
any question already in the calibration split.

:func:`_builtin_documents` returns every document (all domains, both splits) in a fixed order;
:mod:`funcnet.data.corpus` filters them into a :class:`~funcnet.data.corpus.Corpus`.
"""
from __future__ import annotations

import ast
import gc
import hashlib
import math
import random
import re
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["BUILTIN_DOMAINS", "EVAL_PERCENT", "STDLIB_MODULES"]

BUILTIN_DOMAINS = ("prose", "code", "math")
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



def _split_of(key: str) -> str:
    h = int(hashlib.sha256(f"{_SPLIT_SALT}:{key}".encode()).hexdigest()[:8], 16)
    return "eval" if h % 100 < EVAL_PERCENT else "calib"


@dataclass(frozen=True)
class _BuiltinDoc:
    text: str
    source: str
    domain: str
    split: str


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
