"""The package layout's rules (pyproject.toml's import-linter contracts) hold, and a broken one is caught."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports over the package in ``tree`` (PYTHONPATH puts it before the editable install)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    shutil.copytree(ROOT / "vggdeploy", tmp_path / "vggdeploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def _plant(path: Path, line: str) -> None:
    """``line`` as the first import of the module at ``path``, as a change under review would add it."""
    text = path.read_text()
    path.write_text(
        text.replace("from __future__ import annotations\n", f"from __future__ import annotations\n{line}\n", 1)
    )


def test_the_tree_keeps_its_contracts(tree_copy):
    result = _lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("deploy/walk.py", "import torch", "vggdeploy.deploy is not allowed to import torch"),
        ("deploy/classify.py", "from vggdeploy.data import batches", "vggdeploy.deploy.classify -> vggdeploy.data"),
        ("model/vgg.py", "from vggdeploy.train import loop", "vggdeploy.model.vgg -> vggdeploy.train.loop"),
        ("export/graph.py", "from vggdeploy.verify import check", "vggdeploy.export.graph -> vggdeploy.verify.check"),
    ],
)
def test_a_planted_import_against_the_rules_fails_them(tree_copy, module, line, broken):
    _plant(tree_copy / "vggdeploy" / module, line)
    result = _lint_imports(tree_copy)
    assert result.returncode == 1
    assert "0 broken" not in result.stdout and broken in result.stdout.replace("\n", " ")
