"""The package as a whole: its public names, and no import cycle between its modules."""

from __future__ import annotations

import ast
from pathlib import Path

import minicpmv_gguf

PACKAGE = Path(minicpmv_gguf.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The package modules `path` imports when it is imported (imports inside functions run later)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    body = ast.parse(path.read_text()).body
    # `if TYPE_CHECKING:` imports count: a cycle there is a design cycle even if Python never runs it.
    body += [
        n for node in body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in node.body
    ]
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from . import x` may name a module
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minicpmv_gguf"):
            found.add(node.module)
    return found


def test_no_import_cycle_inside_the_package():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {t for t in top_level_imports(p) if t in modules and t != m} for m, p in modules.items()}
    # Importing a.b.c runs a/__init__ and a/b/__init__ first: those edges are Python's, not cycles.
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_the_pipeline_is_the_package_api():
    for name in ("convert_lm", "convert_mmproj", "quantize_lm", "build", "open_model", "package_ollama"):
        assert callable(getattr(minicpmv_gguf, name)), name
        assert name in minicpmv_gguf.__doc__


def test_the_cli_offers_the_mmproj_types_the_converter_writes():
    from minicpmv_gguf.cli import MMPROJ_OUTTYPES
    from minicpmv_gguf.tensor_plan import MMPROJ_OUTTYPES as LIBRARY

    assert MMPROJ_OUTTYPES == tuple(LIBRARY)
