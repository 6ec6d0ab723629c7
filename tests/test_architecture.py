"""The shape of the code: layers of packages (docs/layout.md), imports that run one way (no circle), modules that stay
short."""

from __future__ import annotations

import ast
from pathlib import Path

import yayi_cli


PACKAGE = Path(yayi_cli.__file__).parent
MAX_LINES = 400
LONG_MODULES = {
    "yayi_cli.core.prompt": "the one prompt-format module (docs/formats.md): templates, markers, encoding and decoding stay together",
}
"""Modules allowed over MAX_LINES, each with the reason; one that is short again must leave this list."""


def modules() -> dict[str, Path]:
    """Every module of yayi_cli by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_by(name: str, path: Path, known: set[str]) -> set[str]:
    """The yayi_cli modules `name` imports anywhere in it (at the top or inside a function); `from P import N`
    counts as importing P.N when that is a module, else P."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return (found & known) - {name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_by(name, path, set(found)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import circle for each group of modules that import each other round (Tarjan's strongly
    connected components), as the path `a -> b -> ... -> a`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [circle_through(min(group), graph, group) for group in groups]


def circle_through(start: str, graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from `start` back to itself inside `group` (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in no circle")


def test_the_graph_sees_imports_at_the_top_inside_functions_and_of_submodules_by_name():
    graph = import_graph()
    assert "yayi_cli.train.plan" in graph["yayi_cli.train.launch"]  # at the top
    assert "yayi_cli.train.launch" in graph["yayi_cli.cli.app"]  # inside train_command
    assert "yayi_cli.train.adapters" in graph["yayi_cli.train.plan"]  # inside a function, `from yayi_cli.train.adapters`
    assert "yayi_cli" in graph["yayi_cli.train.plan"]  # `from yayi_cli import __version__`: the package itself


def test_a_circle_is_found_and_named_by_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e", "d"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"x"}}) == [["a", "b", "a"], ["x", "y", "x"]]


def test_no_import_circle_in_yayi_cli():
    found = cycles(import_graph())
    assert found == [], "import circles: " + "; ".join(" -> ".join(circle) for circle in found)


def test_no_module_is_longer_than_400_lines_except_the_listed_ones():
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    too_long = {name: lines for name, lines in lengths.items() if lines > MAX_LINES and name not in LONG_MODULES}
    assert too_long == {}, f"over {MAX_LINES} lines: split them, or list them with a reason in LONG_MODULES"
    short_again = [name for name in LONG_MODULES if lengths.get(name, 0) <= MAX_LINES]
    assert short_again == [], "no longer long (or gone): remove them from LONG_MODULES"


LAYERS = (("runtime",), ("core",), ("models",), ("options",), ("data", "train", "chat", "eval", "convert", "serve", "web"), ("cli",))
"""yayi_cli's packages from the bottom up (docs/layout.md): a package may import its own modules and those of the
layers below it; the commands share one layer, and none of them imports another's package."""


def room_of(module: str) -> str | None:
    """The package under yayi_cli that holds `module` (None: the top package itself, or __main__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in {room for layer in LAYERS for room in layer}) else None


def layer_breaks(graph: dict[str, set[str]], paths: dict[str, Path]) -> list[str]:
    """Each import that goes up a layer or sideways into another command, as `file: imports module (why)`."""
    level = {room: n for n, layer in enumerate(LAYERS) for room in layer}
    found = []
    for name, targets in sorted(graph.items()):
        room = room_of(name)
        if room is None:
            continue
        for target in sorted(targets):
            other = room_of(target)
            if other is None or other == room or level[other] < level[room]:
                continue
            why = "another command's package" if level[other] == level[room] else f"a higher layer ({other}/)"
            found.append(f"{paths[name].relative_to(PACKAGE.parent)}: imports {target} ({why})")
    return found


def test_every_module_sits_in_a_package_of_a_layer():
    loose = [name for name in modules() if room_of(name) is None and name not in ("yayi_cli", "yayi_cli.__main__")]
    assert loose == [], f"modules outside the layers' packages: {loose}; move each into the package of its role"


def test_a_package_imports_only_its_own_layer_s_modules_and_those_below():
    assert layer_breaks(import_graph(), modules()) == []


def test_an_import_upwards_or_between_commands_is_named_with_its_file():
    graph = {"yayi_cli.core.prompt": {"yayi_cli.models.loading"}, "yayi_cli.chat.session": {"yayi_cli.eval.command"},
             "yayi_cli.eval.command": {"yayi_cli.core.prompt", "yayi_cli.eval.gates", "yayi_cli"}}
    paths = {name: PACKAGE.parent / (name.replace(".", "/") + ".py") for name in graph}
    assert layer_breaks(graph, paths) == [
        "yayi_cli/chat/session.py: imports yayi_cli.eval.command (another command's package)",
        "yayi_cli/core/prompt.py: imports yayi_cli.models.loading (a higher layer (models/))",
    ]


def test_docs_layout_names_every_module():
    layout = (PACKAGE.parent / "docs" / "layout.md").read_text(encoding="utf-8")
    missing = [str(path.relative_to(PACKAGE)) for name, path in modules().items()
               if path.name != "__init__.py" and str(path.relative_to(PACKAGE)) not in layout]
    assert missing == [], f"docs/layout.md does not name {missing}"
