"""The package layout's rules (docs/design.md): one dependency direction, checked by import-linter's
contracts in pyproject.toml; no funcnet import inside a function; old import paths still work."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "funcnet"


def _function_imports(path: Path, root: Path = ROOT) -> list[str]:
    """funcnet imports that sit inside a function or method of ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == "funcnet"):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "funcnet" for a in node.names):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_funcnet_import_inside_a_function():
    bad = [hit for p in sorted(SRC.rglob("*.py")) for hit in _function_imports(p)]
    assert bad == [], f"funcnet imports inside functions (move them to the module top): {bad}"


def test_function_import_scan_finds_one(tmp_path):
    """The scan above is not vacuous: it flags a planted in-function import."""
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    from funcnet.core import models\n    return models\n")
    hits = _function_imports(f, root=tmp_path)
    assert hits == ["m.py:4"]


def test_import_contracts_kept():
    """import-linter's contracts (layers, nothing imports cli, no cycles inside a subpackage)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "broken" in r.stdout and " 0 broken" in r.stdout


@pytest.mark.parametrize("old, new, name", [
    ("funcnet.corpus", "funcnet.data.corpus", "load_corpus"),
    ("funcnet.record", "funcnet.data.record", "record"),
    ("funcnet.store", "funcnet.data.store", "ActivationStore"),
    ("funcnet.models", "funcnet.core.models", "load_model"),
    ("funcnet.adapters", "funcnet.core.adapters", "get_adapter"),
    ("funcnet.ica", "funcnet.networks.canica", "CanICA"),
    ("funcnet.plots", "funcnet.report.plots", "make_figures"),
    ("funcnet.shrink", "funcnet.core.shrink", "slice_mlp"),
])
def test_old_module_paths_alias_the_new_modules(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(new)
    assert hasattr(mod, name)
    assert any(new in str(x.message) for x in w), "the warning names the new path"


def test_readme_python_api_imports():
    """The imports of the README's Python example."""
    import funcnet
    from funcnet.data.corpus import load_corpus
    from funcnet.evaluate import perplexity
    from funcnet.intervene import inhibit, random_like
    from funcnet.networks import decompose
    from funcnet.prune import prune, save_pruned
    from funcnet.data.record import record

    assert callable(funcnet.load_model) and callable(record) and callable(decompose) and callable(inhibit)
    assert callable(random_like) and callable(perplexity) and callable(prune) and callable(save_pruned)
    assert funcnet.corpus.load_corpus is load_corpus


def test_errors_are_value_errors():
    from funcnet.errors import FuncnetError, UnsupportedArchitectureError

    assert issubclass(FuncnetError, ValueError) and issubclass(UnsupportedArchitectureError, FuncnetError)


def test_names_moved_out_of_a_module_name_their_new_home():
    with pytest.raises(ImportError, match="moved to funcnet.prune.pruning_importance"):
        from funcnet.networks import pruning_importance  # noqa: F401
    from funcnet.prune import networks_for_pruning, pruning_importance, pruning_keep_masks  # noqa: F401


def test_every_command_parses_its_arguments_without_the_library():
    """Argument errors answer at once: building any command's parser imports neither torch nor
    transformers (the library is loaded when the command runs; benchmarks/cli_startup.py times it)."""
    code = ("import sys\nfrom funcnet.cli import COMMANDS, build_parser\n"
            "for name in COMMANDS:\n    build_parser([name])\n"
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def test_command_line_choices_are_the_library_s():
    """The names the parser offers (funcnet._defaults) are the ones the library defines."""
    import funcnet._defaults as D
    from funcnet import fingerprint, prune
    from funcnet.core import pruned
    from funcnet.experiments import DOMAINS
    from funcnet.explore import SIZES
    from funcnet.networks import MODES

    assert set(D.BUILTIN_PRUNING_METHODS) <= set(prune.METHODS)  # tests may register more
    assert D.COMPENSATIONS == prune.COMPENSATIONS and D.DENOMINATORS == prune.DENOMINATORS
    assert D.ALLOCATIONS == prune.ALLOCATIONS and D.SAVE_FORMATS == pruned.SAVE_FORMATS
    assert D.NETWORK_MODES == MODES and D.DOMAINS == DOMAINS and tuple(SIZES) == D.EXPLORE_SIZES
    assert D.FINGERPRINT_SIGNALS == fingerprint.SIGNAL_CHOICES and D.FINGERPRINT_ALPHA == fingerprint.ALPHA
