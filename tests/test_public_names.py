"""Every module of the four packages declares its public names, and each declared name exists."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = sorted(p for folder in ("metaopt", "tasks", "meta_train", "evaluate")
                 for p in (ROOT / folder).rglob("*.py") if p.name != "__main__.py")


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_declares_existing_public_names(path):
    tree = ast.parse(path.read_text())
    declared = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
    if path.name == "__init__.py" and not declared and len(tree.body) <= 1:
        return  # a namespace marker with nothing but its docstring
    assert declared, f"{path.relative_to(ROOT)}: no __all__"
    names = ast.literal_eval(declared[0])
    missing = set(names) - _top_level_names(tree)
    assert not missing, f"{path.relative_to(ROOT)}: __all__ names undefined {sorted(missing)}"
    assert len(names) == len(set(names)), f"{path.relative_to(ROOT)}: __all__ repeats a name"
