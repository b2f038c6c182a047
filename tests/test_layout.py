"""The suite's layout: a test module imports what it shares with others from tests/helpers,
never from another test module or from conftest.py (pytest imports a test module and conftest
under their bare names; imported again as ``tests.x`` they would be second copies, with their
own module state), and conftest.py holds only fixtures and hooks."""

import ast
from pathlib import Path

import pytest

from tests.helpers.source import parse

TESTS = Path(__file__).resolve().parent


def _imported(tree: ast.AST) -> list[str]:
    """Every module an import in ``tree`` names (nested imports too; ``from a import b`` gives
    ``a`` and ``a.b``, since b may be a module)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names += [base, *(f"{base}.{alias.name}".replace("..", ".") for alias in node.names)]
    return names


def forbidden_imports(source: str) -> list[str]:
    """The imports in ``source`` of a test module, of conftest, or of the helpers by a name other
    than ``tests.helpers``."""
    bad = []
    for name in _imported(parse(source)):
        parts = [p for p in name.split(".") if p]
        if any(p == "conftest" or p.startswith("test_") for p in parts) or \
                (parts and parts[0] in ("helpers", "_fixtures_data")):
            bad.append(name)
    return bad


def test_the_check_sees_every_way_to_import_a_test_module_or_conftest():
    for source in ("from tests.test_sweep import ROOT", "from conftest import tiny_overrides",
                   "from tests.conftest import on_gloo_ranks", "import tests.test_losses",
                   "from tests import test_losses", "def f():\n    from test_losses import x",
                   "from .conftest import x", "from helpers.runs import tiny_overrides"):
        assert forbidden_imports(source), source
    assert forbidden_imports("from tests.helpers.runs import tiny_overrides\nimport pytest\nfrom mpcl import cli") == []


@pytest.mark.parametrize("path", sorted([*TESTS.glob("*.py"), *(TESTS / "helpers").glob("*.py")]),
                         ids=lambda p: str(p.relative_to(TESTS)))
def test_no_module_imports_a_test_module_or_conftest(path):
    assert forbidden_imports(path.read_text()) == [], f"{path.name}: import these from tests.helpers instead"


def test_conftest_holds_only_fixtures_and_hooks():
    tree = parse((TESTS / "conftest.py").read_text())
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert functions
    for f in functions:
        fixture = any("fixture" in ast.unparse(d) for d in f.decorator_list)
        assert fixture or f.name.startswith("pytest_"), f"conftest.py: {f.name} is neither a fixture nor a hook"

