"""The layering eval -> ddgan -> networks -> ops, checked on the source: no import ever points back up."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each package and the top-level packages it must never import.
FORBIDDEN = {"ops": {"networks", "ddgan", "eval"}, "networks": {"ddgan", "eval"}, "ddgan": {"eval"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module a file imports, anywhere in it (function-local imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_back_up_the_layers(package):
    offenders = {str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in sorted((REPO / package).rglob("*.py"))}
    assert not {path: names for path, names in offenders.items() if names}


def test_the_checker_sees_local_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from eval.fid import fid\n    import networks.layers\n")
    assert imported_packages(module) == {"eval", "networks"}


def test_every_torch_load_is_weights_only():
    calls = []
    for path in sorted(REPO.glob("**/*.py")):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                keywords = {k.arg: k.value for k in node.keywords}
                safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls, "the scan found no torch.load at all"
    assert [where for where, safe in calls if not safe] == []


# ddgan's subpackages from the bottom up: a module may import its own layer and those below, never above.
# Top-level modules: version.py at the bottom; latent.py is the spaces' public alias; command.py, cli.py,
# soak.py and the package's __init__ (from_pretrained) on top.
LAYERS = [
    ("ddgan.version",), ("ddgan.runtime",), ("ddgan.diffusion",), ("ddgan.data",), ("ddgan.spaces", "ddgan.latent"),
    ("ddgan.config",), ("ddgan.models",), ("ddgan.sampling",), ("ddgan.export", "ddgan.training"),
    ("ddgan.command",), ("ddgan.cli", "ddgan.soak", "ddgan"),
]
# "package.module:function" strings: a command imported by name when it is first run.
NAMED_MODULE = re.compile(r"""["']((?:ddgan|eval|networks|ops)(?:\.\w+)*):\w+["']""")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for package in ("ddgan", "eval", "networks", "ops")
            for path in sorted((REPO / package).rglob("*.py"))}


def runtime_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The repository modules a file imports when it runs (anywhere in it, but not under `if TYPE_CHECKING:`),
    and those it names as "module:function" to import later; `from package import module` is the module."""
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                 for statement in block.body for node in ast.walk(statement)}
    names = set(NAMED_MODULE.findall(path.read_text()))
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                      for alias in node.names}
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module_name(path):
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: runtime_imports(path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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
            visit(node)
    return found


def test_no_import_cycle_among_modules_counting_named_commands():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def layer_of(module: str) -> int:
    matches = [(len(prefix), level) for level, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def test_ddgans_subpackages_import_only_their_own_layer_and_below():
    graph = import_graph()
    upward = {module: sorted(target for target in targets if target.startswith("ddgan")
                             and layer_of(target) > layer_of(module))
              for module, targets in graph.items() if module == "ddgan" or module.startswith("ddgan.")}
    assert {module: targets for module, targets in upward.items() if targets} == {}


def test_only_the_command_table_names_eval_and_nothing_imports_it():
    graph = import_graph()
    naming_eval = sorted(module for module, targets in graph.items()
                         if module.startswith("ddgan") and any(t.startswith("eval") for t in targets))
    assert naming_eval == ["ddgan.cli"]
    assert sorted(module for module, targets in graph.items() if "ddgan.cli" in targets) == []
