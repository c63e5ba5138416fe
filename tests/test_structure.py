"""The package's shape: no import cycle among tiersel's modules, and no module reaching into
another's private names (read from the source, every import counted, those only for type
checking too)."""

from __future__ import annotations

import ast
import difflib
import keyword
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tiersel"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The tiersel module ``name`` is, or is in (``tiersel.policy.CheapestFeasible`` ->
    ``tiersel.policy``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            found = _resolve(target)
            if found is not None and found != name:
                out.add(found)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_tiersel_modules() -> None:
    # The package's __init__ files gather their submodules' names for users; a submodule
    # never imports its own package's __init__, so those edges cannot close a cycle.
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert len(graph) > 50
    assert _cycles(graph) == []


def _defined(tree: ast.AST) -> set[str]:
    """Every name a module defines: functions, classes, their attributes and ``self.x`` ones."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return names


def test_no_module_reaches_into_another_modules_private_names() -> None:
    reached: list[str] = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        own = _defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                reached += [f"{name} imports {a.name}" for a in node.names if _private(a.name)]
            elif (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and node.attr not in own
                and node.attr not in ("_replace", "_asdict", "_fields", "_make")  # NamedTuple API
            ):
                reached.append(f"{name}:{node.lineno} .{node.attr}")
    assert reached == []


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


# -- sync and async twins -----------------------------------------------------------------------

_NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_KEYWORDS = frozenset(keyword.kwlist) | {"self", "None", "True", "False"}


def _shape(line: str) -> str:
    """A line's shape: ``async`` and ``await`` dropped, every other name one placeholder, so
    ``x = await self._ask(a)`` and ``y = self.ask(b)`` have the same shape."""
    line = re.sub(r"\b(async|await)\s+", "", line.strip())
    line = re.sub(r"(\"[^\"]*\"|'[^']*')", "S", line)
    return _NAME.sub(lambda m: m.group(0) if m.group(0) in _KEYWORDS else "N", line)


def _body(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """A function's body as shapes, less its docstring: its signature is the API the twins
    share by design, its docstring says which is which."""
    first = node.body[0]
    skip_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    start = node.body[1].lineno if skip_doc and len(node.body) > 1 else first.lineno
    if skip_doc and len(node.body) == 1:
        return []
    return [_shape(x) for x in lines[start - 1 : node.end_lineno] if x.strip()]


def _twins() -> list[tuple[str, list[str], list[str]]]:
    """Each async function with its sync twin in the same module: ``aname`` / ``name``,
    ``handle_async_request`` / ``handle_request``, or one name in an ``AsyncX`` / ``X`` class."""
    found = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        functions: dict[tuple[str, str], ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for cls in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
            owner = cls.name if isinstance(cls, ast.ClassDef) else ""
            for node in getattr(cls, "body", []):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    functions[(owner, node.name)] = node
        for (owner, fname), node in functions.items():
            if not isinstance(node, ast.AsyncFunctionDef):
                continue
            sync_owner = owner.removeprefix("Async") if owner.startswith("Async") else owner
            candidates = [
                (sync_owner, fname),
                (sync_owner, fname.removeprefix("a")),
                (sync_owner, fname.replace("_async_", "_")),
                (sync_owner, "_" + fname.removeprefix("_a")),
            ]
            for key in candidates:
                twin = functions.get(key)
                if twin is not None and isinstance(twin, ast.FunctionDef):
                    label = f"{name}: {key[0]}.{key[1]} / {owner}.{fname}"
                    found.append((label, _body(lines, twin), _body(lines, node)))
                    break
    return found


def _longest_run(a: list[str], b: list[str]) -> int:
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return max((block.size for block in matcher.get_matching_blocks()), default=0)


def test_no_sync_and_async_twins_share_more_than_six_lines_of_one_shape() -> None:
    twins = _twins()
    assert len(twins) > 20  # the pairing finds them
    long = [(label, run) for label, a, b in twins if (run := _longest_run(a, b)) > 6]
    assert long == []
