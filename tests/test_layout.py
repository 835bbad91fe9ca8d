"""The package's architecture: imports point one way, and the CLI's parser stays free of PyTorch."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cyclegan"
LEAVES = ("errors", "files", "layout", "config", "devices", "seeds", "precision", "distributed")
# Each layer may import its own and the ones before it, never one after it.
LAYERS = (
    "leaf",
    "networks",
    "models",
    "data",
    "translation",
    "evaluation",
    "training",
    "demo",
    "cli",
    "__main__",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """``cyclegan.networks.resnet`` -> ``networks``; every leaf module -> ``leaf``."""
    top = module.split(".")[1]
    return "leaf" if top in LEAVES else top


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def imported(source: str, module: str, package: bool = False) -> set[str]:
    """The package's modules ``source`` (the text of ``module``) imports anywhere: inside functions and
    ``TYPE_CHECKING`` blocks too."""
    here = module.split(".") if package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*here[: len(here) - node.level + 1], *filter(None, [node.module])])
            names |= {f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names}
    return {n for n in names if n.startswith("cyclegan.")}


def imports_of(path: Path) -> set[str]:
    return imported(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def modules() -> list[Path]:
    """Every module but the package's own ``__init__``, the lazy facade that re-exports the public API."""
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"]


def test_the_layers_cover_every_module() -> None:
    assert {layer(module_name(p)) for p in modules()} <= set(LAYERS)
    assert len(modules()) > 40


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path: Path) -> None:
    """leaves < networks < models < data < translation < evaluation < training < demo < cli: e.g.
    ``models`` and ``networks`` never import ``training``, ``translation`` or ``evaluation``."""
    own = LAYERS.index(layer(module_name(path)))
    upward = sorted(name for name in imports_of(path) if LAYERS.index(layer(name)) > own)
    assert not upward, f"{module_name(path)} ({LAYERS[own]}) imports a later layer: {upward}"


def test_the_check_sees_imports_in_functions_and_relative_ones() -> None:
    source = (
        "def f():\n    from cyclegan.training import loop\n"
        "    from . import layers\n    import cyclegan.seeds\n"
    )
    assert imported(source, "cyclegan.networks.fake") == {
        "cyclegan.training.loop",
        "cyclegan.networks.layers",
        "cyclegan.seeds",
    }
    for module, package in (("cyclegan.networks.fake", False), ("cyclegan.networks", True)):
        assert imported("from ..models import base\n", module, package) == {"cyclegan.models.base"}


def test_building_the_cli_parser_imports_no_torch() -> None:
    """``cyclegan --help`` and argument errors answer at once: the parser needs nothing heavy."""
    script = (
        'import sys, cyclegan.cli; cyclegan.cli.build_parser(); assert "torch" not in sys.modules, "torch"'
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
    )
    assert result.returncode == 0, result.stderr


def test_ci_runs_the_readme_test_command() -> None:
    """The Quickstart's test command is the one CI runs, word for word."""
    command = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert "ruff format --check" in command
    assert command in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()


def test_the_public_api_and_the_readmes_imports_come_from_the_package() -> None:
    import cyclegan

    assert sorted(cyclegan.__all__) == sorted(cyclegan._EXPORTS)
    for name, module in cyclegan._EXPORTS.items():
        assert getattr(cyclegan, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        cyclegan.Trainer  # noqa: B018
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    imports = [line for line in readme if line.startswith("from cyclegan import ")]
    assert imports
    for line in imports:
        exec(line, {})
