"""The layering eval -> ddgan -> networks -> ops, checked on the source: no import ever points back up."""

import ast
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
