"""The pack's structural rules, checked from source with ``ast`` (nothing is imported).

Rules (``docs/architecture.md`` explains why):

(a) no import cycle between files of ``unet_core`` and ``nodes``;
(b) no cycle between the sub-packages of ``unet_core`` (``checkpoints``, ``diffusion``, ...; a
    top-level module such as ``unet_core/errors.py`` counts as a room of its own);
(c) ``unet_core`` imports neither ``nodes`` nor any ComfyUI module;
(d) ComfyUI modules are imported only in ``nodes/host/``, and there only inside functions;
(e) a file of ``unet_core`` or ``nodes`` longer than ``MAX_LINES`` says why in its module
    docstring, on a line starting ``Length:``.

Every import statement counts, wherever it stands (module level, inside a function, under
``if TYPE_CHECKING``): a lazy import is still a dependency, and a cycle of lazy imports still
ties two rooms together. An import edge goes to the module a statement names: ``from .a import b``
is an edge to ``a/b.py`` when that file exists, else to ``a`` (its ``__init__.py``); the parent
packages' ``__init__.py`` files that Python runs on the way are not edges, so a package may
re-export its modules' names without forming a cycle.

Run ``python3 tests/import_rules.py [ROOT]`` for a readable report (exit status 1 on a violation).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("unet_core", "nodes")
CORE = "unet_core"
HOST_PACKAGE = "nodes.host"
MAX_LINES = 400
LENGTH_REASON_PREFIX = "Length:"
# Top-level modules that only exist inside a ComfyUI process. ``nodes`` here is ComfyUI's own
# module: the pack's ``nodes`` package is always imported relatively.
COMFY_MODULES = frozenset({"comfy", "comfy_api", "comfy_execution", "comfy_extras", "execution", "folder_paths",
                           "latent_preview", "node_helpers", "nodes", "server"})


@dataclass(frozen=True)
class ImportEdge:
    """One import statement of ``source`` that resolves to ``target`` (dotted module names)."""

    source: str
    target: str
    line: int
    lazy: bool  # inside a function body


@dataclass(frozen=True)
class ExternalImport:
    """An absolute import of a module outside the pack (``top`` is its first name component)."""

    source: str
    top: str
    line: int
    lazy: bool


@dataclass
class ModuleInfo:
    name: str
    path: Path
    lines: int
    docstring: str
    edges: list[ImportEdge] = field(default_factory=list)
    external: list[ExternalImport] = field(default_factory=list)


def module_name(root: Path, path: Path) -> str:
    """``unet_core/diffusion/unet.py`` -> ``unet_core.diffusion.unet``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(tree: ast.Module) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of ``tree`` with whether it sits inside a function body."""

    def visit(node: ast.AST, lazy: bool) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, lazy
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from visit(child, inner)

    yield from visit(tree, False)


def scan(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, ModuleInfo]:
    """Every module under ``root/<package>`` with its resolved pack-internal edges and external imports."""
    files = sorted(p for package in packages for p in (root / package).rglob("*.py"))
    names = {module_name(root, p) for p in files}
    modules: dict[str, ModuleInfo] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        name = module_name(root, path)
        info = ModuleInfo(name=name, path=path, lines=len(text.splitlines()),
                          docstring=ast.get_docstring(tree) or "")
        package = name if _is_package(path) else name.rpartition(".")[0]
        for node, lazy in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    info.external.append(ExternalImport(name, alias.name.split(".")[0], node.lineno, lazy))
                continue
            if node.level == 0:
                info.external.append(ExternalImport(name, (node.module or "").split(".")[0], node.lineno, lazy))
                continue
            base_parts = package.split(".") if package else []
            if node.level - 1 > len(base_parts):
                raise ValueError(f"{path}:{node.lineno}: relative import above the pack root")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                target = candidate if candidate in names else base
                if target and target != name:
                    info.edges.append(ImportEdge(name, target, node.lineno, lazy))
        modules[name] = info
    return modules


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def _shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, ()) & members):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if successor not in previous:
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    return [start]


def _describe_cycles(graph: dict[str, set[str]], why: dict[tuple[str, str], str], kind: str) -> list[str]:
    problems = []
    for component in _strongly_connected(graph):
        cycle = _shortest_cycle(graph, component[0], set(component))
        steps = "".join(f"{a} -[{why[(a, b)]}]-> " for a, b in zip(cycle, cycle[1:], strict=False))
        problems.append(f"{kind} cycle among {', '.join(component)}: {steps}{cycle[-1]}")
    return problems


def file_cycles(modules: dict[str, ModuleInfo]) -> list[str]:
    """Rule (a): one readable line per import cycle between files."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    why: dict[tuple[str, str], str] = {}
    for info in modules.values():
        for edge in info.edges:
            graph[info.name].add(edge.target)
            why.setdefault((info.name, edge.target), f"line {edge.line}{', lazy' if edge.lazy else ''}")
    return _describe_cycles(graph, why, "file")


def core_room(name: str) -> str | None:
    """The sub-package (or top-level module) of ``unet_core`` that module ``name`` belongs to."""
    parts = name.split(".")
    if parts[0] != CORE or len(parts) < 2:
        return None
    return parts[1]


def room_cycles(modules: dict[str, ModuleInfo]) -> list[str]:
    """Rule (b): one readable line per cycle between rooms of ``unet_core``."""
    graph: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for info in modules.values():
        source = core_room(info.name)
        if source is None:
            continue
        graph.setdefault(source, set())
        for edge in info.edges:
            target = core_room(edge.target)
            if target is not None and target != source:
                graph[source].add(target)
                why.setdefault((source, target), f"{info.name} line {edge.line}")
    return _describe_cycles(graph, why, "sub-package")


def core_leaks(modules: dict[str, ModuleInfo]) -> list[str]:
    """Rule (c): ``unet_core`` importing ``nodes`` or ComfyUI."""
    problems = []
    for info in modules.values():
        if core_room(info.name) is None and info.name != CORE:
            continue
        for edge in info.edges:
            if not edge.target.startswith(CORE + ".") and edge.target != CORE:
                problems.append(f"{info.name} line {edge.line} imports {edge.target} (unet_core never imports nodes)")
        for ext in info.external:
            if ext.top in COMFY_MODULES:
                problems.append(f"{info.name} line {ext.line} imports ComfyUI's {ext.top}")
    return problems


def host_leaks(modules: dict[str, ModuleInfo]) -> list[str]:
    """Rule (d): ComfyUI imports outside ``nodes/host/``, or at module level inside it."""
    problems = []
    for info in modules.values():
        in_host = info.name == HOST_PACKAGE or info.name.startswith(HOST_PACKAGE + ".")
        for ext in info.external:
            if ext.top not in COMFY_MODULES:
                continue
            if not in_host:
                problems.append(f"{info.name} line {ext.line} imports ComfyUI's {ext.top} outside nodes/host/")
            elif not ext.lazy:
                problems.append(f"{info.name} line {ext.line} imports ComfyUI's {ext.top} at module level")
    return problems


def long_files(modules: dict[str, ModuleInfo], max_lines: int = MAX_LINES) -> list[str]:
    """Rule (e): files over ``max_lines`` lines whose docstring has no ``Length:`` line."""
    problems = []
    for info in modules.values():
        if info.lines <= max_lines:
            continue
        reasons = [line for line in info.docstring.splitlines() if line.strip().startswith(LENGTH_REASON_PREFIX)]
        if not reasons:
            problems.append(f"{info.name} has {info.lines} lines (over {max_lines}) and no "
                            f"'{LENGTH_REASON_PREFIX}' line in its module docstring")
    return problems


RULES = {
    "file cycles": file_cycles,
    "sub-package cycles": room_cycles,
    "unet_core imports nodes or ComfyUI": core_leaks,
    "ComfyUI imports outside nodes/host or at module level": host_leaks,
    "long files without a reason": long_files,
}


def check(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, list[str]]:
    """Every rule's problems for the pack at ``root`` (empty lists when it is sound)."""
    modules = scan(root, packages)
    return {rule: find(modules) for rule, find in RULES.items()}


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    modules = scan(root)
    edges = sum(len(info.edges) for info in modules.values())
    status = 0
    sys.stdout.write(f"{len(modules)} modules, {edges} pack-internal import edges under {root}\n")
    for rule, find in RULES.items():
        problems = find(modules)
        status |= bool(problems)
        sys.stdout.write(f"{rule}: {'none' if not problems else len(problems)}\n")
        for problem in problems:
            sys.stdout.write(f"  {problem}\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
