"""The package's shape: no import cycles, layers import downwards only, adapters stay thin, and every
config object's defaults are the schema's."""

from __future__ import annotations

import ast
import dataclasses
import pkgutil

import pytest
from conftest import REPO_ROOT

import talk3d_core
from talk3d_core.util.config import load_schema
from talk3d_core.util.provenance import PACKAGE_DIR, _imports, _module_file

#: Layers below the stage modules (talk3d_core/<stage>.py); report/ holds rule modules too.
LOWER = ("util", "face", "nets", "metrics", "model")


def import_graph() -> dict[str, set[str]]:
    """talk3d_core module -> the talk3d_core modules it imports (packages' __init__ left out)."""
    names = [m.name for m in pkgutil.walk_packages(talk3d_core.__path__, "talk3d_core.")]
    graph = {}
    for name in names:
        path = _module_file(name, PACKAGE_DIR)
        if path.name == "__init__.py":
            continue
        deps = _imports(name, path, PACKAGE_DIR)
        graph[name] = {d for d in deps if d != name and _module_file(d, PACKAGE_DIR).name != "__init__.py"}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return "stage" if len(parts) == 2 else parts[1]


def test_import_graph_has_no_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_layers_import_downwards_only():
    problems = []
    for module, deps in import_graph().items():
        for dep in deps:
            if layer(module) == "util" and layer(dep) != "util":
                problems.append(f"{module} -> {dep} (util imports util only)")
            if layer(module) in LOWER and layer(dep) == "stage":
                problems.append(f"{module} -> {dep} (a stage module)")
    assert not problems, "\n".join(problems)


def test_adapters_are_thin_and_call_one_core_function():
    for script in sorted((REPO_ROOT / "workflow/scripts").glob("*.py")):
        lines = script.read_text().splitlines()
        assert len(lines) <= 30, f"{script.name}: {len(lines)} lines; move the logic into talk3d_core"
        tree = ast.parse(script.read_text())
        imported = [
            n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("talk3d_core")
        ]
        assert imported, f"{script.name} calls nothing in talk3d_core"
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert not defs, f"{script.name} defines {[d.name for d in defs]}: that belongs in the core"


def schema_defaults(schema: dict, *path: str) -> dict:
    """The defaults the schema gives the keys of the section at ``path`` (e.g. "prior", "pretrained")."""
    node = schema
    for key in path:
        node = node["properties"][key]
    return {k: v["default"] for k, v in node.get("properties", {}).items() if "default" in v}


def config_classes() -> list[tuple[type, tuple[str, ...]]]:
    from talk3d_core.personalize import PretrainedConfig
    from talk3d_core.prior import PriorConfig
    from talk3d_core.train import TrainConfig

    return [(PriorConfig, ("prior",)), (PretrainedConfig, ("prior", "pretrained")), (TrainConfig, ("train",))]


@pytest.mark.parametrize(
    "cls, path", config_classes(), ids=lambda v: v.__name__ if isinstance(v, type) else ""
)
def test_config_defaults_are_the_schemas(cls, path):
    defaults = schema_defaults(load_schema(REPO_ROOT / "workflow/schemas/config.schema.yaml"), *path)
    for field in dataclasses.fields(cls):
        assert field.name in defaults, f"{cls.__name__}.{field.name} has no setting in the schema"
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        expected = defaults[field.name]
        assert value == (tuple(expected) if isinstance(value, tuple) else expected), (
            f"{cls.__name__}.{field.name} = {value!r}, the schema's default is {expected!r}"
        )
