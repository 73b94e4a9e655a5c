"""The suite's marks do what pyproject.toml says they do, and nothing more."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]


def test_without_a_gpu_only_the_gpu_mark_skips_a_test(tmp_path):
    """Every test under tests/gpu/ had been skipped without a GPU, the stages' CPU rehearsals included: the skip
    looked for the word among a test's keywords, which also hold the names of its folders."""
    folder = tmp_path / "gpu"  # a folder named like the mark, as tests/gpu/ is
    folder.mkdir()
    (folder / "test_both.py").write_text(
        "import pytest\n\n\ndef test_plain():\n    pass\n\n\n@pytest.mark.gpu\ndef test_marked():\n    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "-rs", "-o", "markers=gpu"],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},  # tests/conftest.py, loaded as a plugin
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert ("2 passed" if torch.cuda.is_available() else "1 passed, 1 skipped") in summary, result.stdout
    assert torch.cuda.is_available() or "test_both.py:8: needs a CUDA GPU" in result.stdout
