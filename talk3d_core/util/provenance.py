"""Source hashes of talk3d_core modules, so the workflow re-runs exactly the stages whose code changed.

A rule puts ``source_hash("talk3d_core.ingest")`` in its ``params``; Snakemake's params trigger then
re-runs the rule (and everything downstream) when that module, or any talk3d_core module it
imports directly or indirectly, changes. Editing an unrelated module leaves the rule alone.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Collection
from pathlib import Path

PACKAGE = "talk3d_core"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _module_file(module: str, package_dir: Path) -> Path | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for type hints only)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(module: str, path: Path, package_dir: Path) -> set[str]:
    """talk3d_core modules imported by ``module`` (absolute and relative imports)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(module, path)
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import name` may import a submodule called name.
            names = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            # Importing a.b.c also runs a/__init__ and a/b/__init__.
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if _module_file(candidate, package_dir) is not None:
                    found.add(candidate)
    return found


def module_closure(module: str, package_dir: Path | None = None, exclude: Collection[str] = ()) -> list[Path]:
    """Files of ``module`` and every talk3d_core module it imports, transitively, sorted.

    ``package_dir`` is the talk3d_core folder to read (default: the one this module came from);
    ``exclude``: modules not followed (what is reached only through them is left out too).
    """
    package_dir = Path(package_dir or PACKAGE_DIR)
    for name in (module, *exclude):
        if _module_file(name, package_dir) is None:
            raise ValueError(f"{name} is not a module of {PACKAGE} (looked in {package_dir})")
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name in exclude:
            continue
        path = _module_file(name, package_dir)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(name, path, package_dir) - seen.keys())
    return sorted(seen.values())


def source_hash(*modules: str, package_dir: Path | None = None, exclude: Collection[str] = ()) -> str:
    """Short sha256 over the source of ``modules`` and their talk3d_core imports (16 hex digits),
    leaving out ``exclude`` (see :func:`module_closure`).

    Not cached: the workflow re-reads the files on every parse, so an edit is always seen.
    """
    package_dir = Path(package_dir or PACKAGE_DIR)
    files = sorted({f for m in modules for f in module_closure(m, package_dir, exclude)})
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
