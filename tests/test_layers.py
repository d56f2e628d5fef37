"""The library (losses/, rollouts/, trainers/, tasks/, models/, evaluation/) never imports the app (thermorl/: CLI
commands, recipes, run folders, console), so it can be used without the app's global state and commands."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("losses", "rollouts", "trainers", "tasks", "models", "evaluation")
# Importable by both layers: the package root (run by every `thermorl.X` import; it holds only the version) and the
# errors the library raises and the app reports, and the readers of user values (recipes and loss parameters).
CORE = ("thermorl", "thermorl.errors", "thermorl.values")


def module_name(path: Path) -> str:
    """The dotted name of a library file: folder losses/ is package thermorl.losses (pyproject's package-dir)."""
    parts = ["thermorl", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether a dotted thermorl name is a module or package on disk (not an attribute of one)."""
    parts = name.split(".")[1:]
    if parts and parts[0] in LIBRARY:
        folder = ROOT.joinpath(*parts)
    else:
        folder = ROOT.joinpath("thermorl", *parts)
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth (inside functions too); `from M import
    n` counts as an import of M.n where that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if base.startswith("thermorl") and is_module(submodule) else base))
    return sorted(set(found))


def is_app(module: str) -> bool:
    if module != "thermorl" and not module.startswith("thermorl."):
        return False
    if module in CORE:
        return False
    return module.split(".")[1] not in LIBRARY


def library_files() -> list[Path]:
    return sorted(path for folder in LIBRARY for path in (ROOT / folder).rglob("*.py"))


def test_library_files_are_found():
    files = library_files()
    assert {path.relative_to(ROOT).parts[0] for path in files} == set(LIBRARY)


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from ..console import quiet_trainer", "thermorl.console"),
        ("from .. import console", "thermorl.console"),
        ("import thermorl.train", "thermorl.train"),
        ("from thermorl import bench", "thermorl.bench"),
    ],
)
def test_an_app_import_is_recognised(tmp_path, monkeypatch, source, module):
    """The check resolves relative imports and `from PACKAGE import MODULE`, inside functions too."""
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "thermorl").mkdir()
    for app_module in ("console", "train", "bench"):
        (tmp_path / "thermorl" / f"{app_module}.py").touch()
    library_file = tmp_path / "models" / "warmup.py"
    library_file.parent.mkdir()
    library_file.write_text(f"def warm():\n    {source}\n")
    assert [name for _, name in imported_modules(library_file) if is_app(name)] == [module]


def test_the_library_never_imports_the_app():
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in library_files()
        for line, module in imported_modules(path)
        if is_app(module)
    ]
    assert not offences, "the library imports the app:\n" + "\n".join(offences)
