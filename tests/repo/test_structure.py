"""The shape of the code base: no import cycle among the project's modules, no file past the length limit, and a
saved checkpoint that carries every Hub file the model imports.

The import graph is read with ``ast`` from the sources (nothing is imported): every ``import`` / ``from ... import``
counts, at module level, inside functions and inside ``try``/``except`` (transformers' import scan reads those
too), relative imports resolved against the importing module's package.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from ..environments import REPO

MAX_LINES = 700
EVAL, STUDIES = "eval", "studies"
LONG_BY_DESIGN = {"foveated_vlm/data/procedural.py"}  # the procedural generator: one topic (issue 13)


def project_sources(root: Path = REPO) -> dict[str, Path]:
    """Module name -> file of the project's own modules: root ``*.py``, ``foveated_vlm/**``, ``eval/**``,
    ``studies/**``."""
    files = sorted(root.glob("*.py")) + sorted((root / "foveated_vlm").rglob("*.py"))
    files += sorted((root / "eval").rglob("*.py")) + sorted((root / "studies").rglob("*.py"))
    modules = {}
    for path in files:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names an import statement may load (``from a import b`` gives ``a.b`` and ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base_parts = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        base = ".".join([*base_parts, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}".lstrip(".") for alias in node.names] + ([base] if base else [])


def import_graph(sources: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (any level: module, function, ``try`` blocks)."""
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = _imported_names(node, module, is_package)
            submodules = [name for name in names if name in sources]
            if isinstance(node, ast.ImportFrom) and len(submodules) > 1:
                submodules = [name for name in submodules if name != names[-1]]  # names beat their package
            edges.update(name for name in submodules if name != module)
        graph[module] = edges
    return graph


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between units: each subpackage of ``foveated_vlm`` (``foveated_vlm.data``, ...), ``eval``,
    ``studies``, and each other module on its own (the Hub files, ``foveated_vlm.metrics``, ...)."""

    def unit(module: str) -> str:
        parts = module.split(".")
        if parts[0] == "foveated_vlm" and len(parts) > 2:
            return ".".join(parts[:2])
        return parts[0] if parts[0] in (EVAL, STUDIES) else module

    units: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges = units.setdefault(unit(module), set())
        edges.update(unit(target) for target in targets if unit(target) != unit(module))
    return units


def import_cycles(graph: dict[str, set[str]]) -> list[tuple[set[str], list[str]]]:
    """Every cycle: the modules of each strongly connected component of more than one module, and one cycle path
    through it (which may leave some of its modules out)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(component, _cycle_path(graph, component)) for component in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One closed path ``[a, b, ..., a]`` inside a strongly connected component (a breadth-first search)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not a cycle")


def _described(cycles: list[tuple[set[str], list[str]]]) -> str:
    return "; ".join(f"{' -> '.join(path)} (together: {sorted(members)})" for members, path in cycles)


def test_the_project_has_no_import_cycle():
    cycles = import_cycles(import_graph(project_sources()))
    assert not cycles, "import cycles: " + _described(cycles)


def test_the_packages_import_each_other_one_way():
    cycles = import_cycles(package_graph(import_graph(project_sources())))
    assert not cycles, "import cycles between packages: " + _described(cycles)


def test_a_re_added_cycle_is_found_and_named(tmp_path):
    """The check itself: the old modeling <-> streaming cycle (a function-level import) is reported by name."""
    for name in ("layout_foveated", "modeling_foveated", "streaming_foveated"):
        (tmp_path / f"{name}.py").write_text(
            (REPO / f"{name}.py").read_text(encoding="utf-8"), encoding="utf-8"
        )
    streaming = tmp_path / "streaming_foveated.py"
    source = streaming.read_text(encoding="utf-8")
    streaming.write_text(
        source + "\n\ndef _again():\n    from .modeling_foveated import AUTO_MAP\n", encoding="utf-8"
    )
    cycles = import_cycles(import_graph(project_sources(tmp_path)))
    assert cycles == [
        (
            {"modeling_foveated", "streaming_foveated"},
            ["modeling_foveated", "streaming_foveated", "modeling_foveated"],
        )
    ]
    assert "modeling_foveated -> streaming_foveated -> modeling_foveated" in _described(cycles)
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ({"a", "b", "c"}, ["a", "b", "c", "a"])
    ]
    packages = package_graph(
        {"foveated_vlm.x.a": {"foveated_vlm.y.b"}, "foveated_vlm.y.b": {"foveated_vlm.x.c"}}
    )
    assert import_cycles(packages) == [
        ({"foveated_vlm.x", "foveated_vlm.y"}, ["foveated_vlm.x", "foveated_vlm.y", "foveated_vlm.x"])
    ]


def imports_of_studies(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module outside ``studies`` -> the ``studies`` modules it imports: studies sit beside the library (Hub files,
    ``foveated_vlm``, ``eval``, the trainer) and use it; nothing of the library may need a study."""
    found = {}
    for module, targets in graph.items():
        if module.split(".")[0] != STUDIES:
            used = {target for target in targets if target.split(".")[0] == STUDIES}
            if used:
                found[module] = used
    return found


def test_studies_are_imported_by_no_hub_file_nor_eval_nor_the_library():
    graph = import_graph(project_sources())
    assert any(module.startswith(f"{STUDIES}.") for module in graph), "the studies package was not scanned"
    assert not imports_of_studies(graph), f"the library imports a study: {imports_of_studies(graph)}"


def test_an_import_of_a_study_from_eval_is_found(tmp_path):
    """The check itself: an ``eval`` module (or a Hub file) that imports a study is reported by name."""
    for folder in (EVAL, STUDIES):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text('"""x"""\n', encoding="utf-8")
    (tmp_path / STUDIES / "runner.py").write_text("import eval\n", encoding="utf-8")
    (tmp_path / EVAL / "probes.py").write_text(
        "def f():\n    from studies.runner import x\n", encoding="utf-8"
    )
    (tmp_path / "modeling_foveated.py").write_text("from .studies import runner\n", encoding="utf-8")
    found = imports_of_studies(import_graph(project_sources(tmp_path)))
    assert found == {"eval.probes": {"studies.runner"}, "modeling_foveated": {"studies.runner"}}


def test_relative_and_package_imports_resolve():
    sources = {name: Path(f"{name.replace('.', '/')}.py") for name in ("x", "pkg.a", "pkg.b")}
    sources["pkg"] = Path("pkg/__init__.py")
    tree = ast.parse("from .b import thing\nfrom . import b\nimport x\nfrom pkg import a")
    names = [name for node in ast.walk(tree) for name in _imported_names(node, "pkg.a", False)]
    assert {"pkg.b", "x", "pkg.a", "pkg"} <= set(names)
    assert _imported_names(ast.parse("from .a import y").body[0], "pkg", True)[0] == "pkg.a.y"


def _tracked_python_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [name for name in listed if not name.startswith("tests/")]


def test_no_python_file_is_longer_than_the_limit():
    allowed = LONG_BY_DESIGN
    long = {}
    for name in _tracked_python_files():
        lines = len((REPO / name).read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in allowed:
            long[name] = lines
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_a_saved_model_carries_every_hub_file_it_imports(make_model, tmp_path):
    """save_pretrained (the model alone) copies modeling_foveated.py and every Hub file it imports, transitively."""
    model, _ = make_model()
    model.save_pretrained(tmp_path)
    graph = import_graph(project_sources())
    needed, frontier = set(), ["modeling_foveated"]
    while frontier:
        module = frontier.pop()
        if module not in needed:
            needed.add(module)
            frontier.extend(graph[module])
    assert {
        "base_foveated",
        "encoder_foveated",
        "streaming_static_foveated",
        "acceleration_foveated",
    } <= needed
    missing = sorted(name for name in needed if not (tmp_path / f"{name}.py").is_file())
    assert not missing, f"save_pretrained left out {missing}"


TEST_GROUPS = {"hub", "data", "training", "eval", "studies", "repo"}
"""The folders of ``tests/``, by what they test; the shared builders, environments and conftest stay at its top."""


def test_the_tests_are_grouped_by_what_they_test():
    tests = REPO / "tests"
    assert not sorted(tests.glob("test_*.py")), "a test file outside the groups"
    folders = {path.name for path in tests.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    assert folders == TEST_GROUPS
    for group in TEST_GROUPS:
        assert list((tests / group).glob("test_*.py")), f"tests/{group} holds no test"
