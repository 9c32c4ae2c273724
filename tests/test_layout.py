"""The layout the README describes: which package may import which, module and function sizes,
where the environment is read, and what each package says it is for.

The import rules are read from the README's "How it is built" table, so the documentation and
the check cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 59
# The one place each side reads its environment (the server's Settings, the client's Profile).
ENVIRONMENT_READERS = {"api/settings.py", "client/profile.py"}


def import_rules() -> dict[str, set[str]]:
    """{package: packages it may import}, from the README's layout table."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How it is built"):]
    rules: dict[str, set[str]] = {}
    for line in section.splitlines():
        match = re.match(r"^\| `(\w+)/` \|[^|]*\| (.*?) \|$", line)
        if match:
            rules[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2)))
            if "everything" in match.group(2):
                rules[match.group(1)] = {"*"}
    return rules


RULES = import_rules()
PACKAGES = sorted(RULES)


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_packages(path: Path) -> set[str]:
    """The top-level names of everything a module imports, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_readme_table_names_every_package() -> None:
    """The table lists the eight product packages, each with its rule."""
    assert sorted(["schema", "streams", "api", "client", "ml", "aggregator",
                               "participant", "infra"]) == PACKAGES, RULES
    assert RULES["schema"] == set(), "schema/ imports nothing of ours"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_one_it_may_not(package: str) -> None:
    """Each module imports only the packages its package's rule allows (and its own)."""
    allowed = RULES[package]
    offences = []
    for path in modules(package):
        for name in imported_packages(path) & set(PACKAGES):
            if name != package and "*" not in allowed and name not in allowed:
                offences.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offences, "\n".join(offences)


def test_the_daemons_never_import_each_other() -> None:
    """Both daemons share ml/, never each other (the README rule says so; this says it twice)."""
    assert "participant" not in RULES["aggregator"] and "aggregator" not in RULES["participant"]


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_and_functions_stay_small(package: str) -> None:
    """No product module over 400 lines, no function of 60 lines or more."""
    too_long = []
    for path in modules(package):
        source = path.read_text()
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def _reads_environment(tree: ast.AST) -> list[int]:
    """Lines that read a named environment variable (os.environ.get, getenv, [..], `in`)."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call | ast.Subscript | ast.Compare):
            continue
        text = ast.unparse(node)
        call = isinstance(node, ast.Call) and re.match(r"^os\.(environ\.get|getenv)\(", text)
        subscript = (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                     and text.startswith("os.environ["))
        membership = isinstance(node, ast.Compare) and text.endswith(" in os.environ")
        if call or subscript or membership:
            lines.append(node.lineno)
    return lines


def test_the_environment_is_read_in_one_place_per_side() -> None:
    """Named variables are read only by api/settings.py (server) and client/profile.py (client)."""
    offences = []
    for package in PACKAGES:
        for path in modules(package):
            where = str(path.relative_to(ROOT))
            if where not in ENVIRONMENT_READERS:
                offences += [f"{where}:{line}" for line in _reads_environment(ast.parse(path.read_text()))]
    assert not offences, "environment read outside Settings/Profile: " + ", ".join(offences)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_says_what_it_is_for_and_what_it_may_import(package: str) -> None:
    """Every package's __init__ docstring has a few lines, one of them its import rule."""
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
    assert len(doc.splitlines()) >= 2 and "Imports:" in doc, f"{package}/__init__.py: {doc!r}"
