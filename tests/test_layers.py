"""The core is layered: every module imports only from its own layer or below, and no
import cycle exists — function-level imports included (they run too).

The layers are drawn in docs/architecture.md; ``LAYERS`` below is the same picture, and a
module that fits no layer fails the test (add it to both). Imports under
``if TYPE_CHECKING:`` never run and are not counted. Importing ``a.b.c`` also runs
``a.b``'s ``__init__``, so that counts as an import of ``a.b`` too.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from tests.helpers import parse_source

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fluxgate_django", "fluxgate_langchain")

#: Lowest first. A module belongs to the first pattern it matches (``re.fullmatch``).
LAYERS: list[tuple[str, list[str]]] = [
    (
        "leaves: settings, context, records, outcomes (Django-free)",
        [
            # Packages whose __init__ exports lazily: importing them imports nothing.
            r"fluxgate_django|fluxgate_django\.reports",
            r"fluxgate_django\.(conf|context|records|outcomes|money|exceptions|errors|webhooks|otel)",
            r"fluxgate_django\.(builder|signals|model_refs)",
        ],
    ),
    ("windows, the site's Celery app", [r"fluxgate_django\.(periods|celery_app)"]),
    (
        "models",
        [r"fluxgate_django\.models(\..+)?", r"fluxgate_django\.reports\.(histogram|managers)"],
    ),
    (
        "pricing, teams, media tokens",
        [r"fluxgate_django\.(pricing|price_rates|price_supplement|teams|media_tokens)"],
    ),
    (
        "budget counters and ledger, estimates, alerts, runaway, rollups, retention",
        [
            r"fluxgate_django\.(counters|ledger|estimate|alerts|runaway|retention)",
            r"fluxgate_django\.reports\.(rollups|rollup_batch)",
        ],
    ),
    ("recording", [r"fluxgate_django\.recording(\..+)?"]),
    ("pipeline", [r"fluxgate_django\.pipeline"]),
    ("budget guard", [r"fluxgate_django\.(guard|budgets)"]),
    (
        "tracking, service, LangChain, API, admin, reports, middleware",
        [
            r"fluxgate_django\.(tracking|service|api|gateway|demo|testing)(\..+)?",
            r"fluxgate_django\.reports(\.(queries|results|chart|export))?",
            r"fluxgate_django\.(admin|admin_report|admin_trace|prometheus|middleware|checks(_\w+)?)",
            r"fluxgate_django\.(celery_support|urls)",
            r"fluxgate_langchain(\..+)?",
        ],
    ),
    (
        "entry points: the package, the app, commands, Celery tasks (published by name)",
        [
            r"fluxgate_django\.(apps|tasks)",
            r"fluxgate_django\.management(\..+)?",
        ],
    ),
]


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "migrations" in parts:
                continue
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join(parts)] = (path, is_package)
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = getattr(test, "id", None) or getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


@functools.cache
def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: modules it imports}`` among the two packages."""
    modules = _modules(root)

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, (path, is_package) in modules.items():
        tree = parse_source(path)
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    if node.module:
                        base.append(node.module)
                    source = ".".join(base)
                else:
                    source = node.module or ""
                subs = [f"{source}.{alias.name}" for alias in node.names]
                targets = [s for s in subs if s in modules] or [source]
                if len(targets) < len(subs):
                    targets.append(source)
            for target in targets:
                # Importing a.b.c runs a/__init__ and a/b/__init__ first.
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    found = owner(".".join(parts[:i]))
                    if found and found != module and not module.startswith(found + "."):
                        edges[module].add(found)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int | None:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(re.fullmatch(p, module) for p in patterns):
            return rank
    return None


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_every_module_imports_only_from_its_layer_or_below():
    edges = import_graph()
    unplaced = sorted(m for m in edges if layer_of(m) is None)
    assert unplaced == [], "modules in no layer (add them to LAYERS and docs/architecture.md)"
    upward = sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"  # type: ignore[index]
        for m, targets in edges.items()
        for t in targets
        if layer_of(t) > layer_of(m)  # type: ignore[operator]
    )
    assert upward == []


def test_the_celery_tasks_are_imported_by_nothing():
    importers = sorted(
        m for m, targets in import_graph().items() if "fluxgate_django.tasks" in targets
    )
    assert importers == []


@pytest.mark.parametrize(
    "module",
    ["fluxgate_django.records", "fluxgate_django.builder", "fluxgate_django.outcomes"],
)
def test_the_record_builder_needs_no_django_models(module):
    """The LangChain remote sink builds records in a process with no Django site."""
    edges = import_graph()
    reachable, todo = set(), [module]
    while todo:
        for target in edges[todo.pop()]:
            if target not in reachable:
                reachable.add(target)
                todo.append(target)
    assert "fluxgate_django.models" not in reachable


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path):
    """A cycle through a function-level import fails (the test can fail)."""
    package = tmp_path / "fluxgate_django"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import x\n")
    (tmp_path / "fluxgate_langchain").mkdir()
    assert _cycles(import_graph(tmp_path)) == [["fluxgate_django.a", "fluxgate_django.b"]]
