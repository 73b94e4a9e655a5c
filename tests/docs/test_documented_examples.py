"""The console examples of README.md and docs/ run, and print what the documents say they print (doc_examples.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_output import OPEN_VARIANT_LIMITS
from doc_examples import examples_in, missing_lines

ROOT = Path(__file__).parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The README's main job trains for minutes on 55,000 images; the test runs the same commands on 6,000 for 3 epochs
# (1,200 held out too few images for the temperature fit the README shows, and 3,000 did on an AVX2 CPU: a 55 %
# model whose fitted T was within its interval of 1): its figures vary, and the one phrase the given --epochs
# changes is named (the recipe no longer sizes the epochs). `check` reads 2,000 of the test images (a fifth of its
# time): its lines are the same.
# Each stand-in: (options added after the command's name, {documented phrase: the phrase the stand-in prints}).
STAND_IN = {
    "vggdeploy train": (
        ["--train-limit", "6000", "--test-limit", "500", "--epochs", "3"],
        {"(batch, epochs, lr sized to the data)": "(batch, lr sized to the data)"},
    ),
    "vggdeploy export": (OPEN_VARIANT_LIMITS, {}),  # its int8 agrees less than a trained model's
    "vggdeploy check": ([*OPEN_VARIANT_LIMITS, "--images", "2000"], {}),
}


def _changed(text: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


def _all_examples():
    return [example for document in DOCUMENTS for example in examples_in(document, ROOT)]


def test_every_console_block_is_marked_and_has_a_command():
    examples = _all_examples()
    assert examples, "no documented examples found"
    assert all(example.commands for example in examples)


@pytest.mark.slow
@pytest.mark.parametrize("example", _all_examples(), ids=lambda example: example.source)
def test_the_documented_example_prints_what_the_document_says(example, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in example.commands:
        stand_ins = STAND_IN if example.mode == "figures vary" else {}  # an exact example runs as written
        extra, changed = next(
            (stand_in for start, stand_in in stand_ins.items() if command.line.startswith(start)), ([], {})
        )
        line = command.line.split(" ", 2)
        run = " ".join([*line[:2], *extra, *line[2:]])
        documented = tuple(_changed(text, changed) for text in command.output)
        result = subprocess.run(["bash", "-c", run], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        real = result.stderr + result.stdout
        missing = missing_lines(documented, real, example.mode == "figures vary")
        assert not missing, f"{example.source}: `{run}` did not print {missing}\nit printed:\n{real[-3000:]}"


def test_the_comparison_catches_a_changed_word_and_frees_only_what_the_mode_frees(tmp_path):
    real = "vggdeploy: 1,080 training images: batch 32\r\nprogress 50%\nmodel: m.onnx (Ankle boot 98.41%)\n"
    assert (
        missing_lines(("vggdeploy: 55,000 training images: batch 256", "model: m.onnx (Shirt 12.5%)"), real, True) == []
    )
    assert missing_lines(("vggdeploy: 55,000 training images: batch 256",), real, False) != []
    assert missing_lines(("vggdeploy: 55,000 pictures: batch 256",), real, True) != []
    assert missing_lines(("model: m.onnx (...)", "vggdeploy: 1,080 training images: batch 32"), real, False) == [
        "vggdeploy: 1,080 training images: batch 32"  # documented lines keep their order
    ]
    unmarked = tmp_path / "page.md"
    unmarked.write_text("text\n```console\n$ vggdeploy --version\n```\n")
    with pytest.raises(ValueError, match=r"page\.md:2: a console block without"):
        examples_in(unmarked, tmp_path)


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_into_benchmarks_and_the_changelog_names_a_heading_there():
    anchors = {
        name: {
            _github_anchor(line.lstrip("#")) for line in (ROOT / name).read_text().splitlines() if line.startswith("#")
        }
        for name in ("BENCHMARKS.md", "CHANGELOG.md")
    }
    links = [
        (document.name, name, anchor)
        for document in [*DOCUMENTS, ROOT / "CHANGELOG.md", ROOT / "BENCHMARKS.md"]
        for name, anchor in re.findall(r"(BENCHMARKS\.md|CHANGELOG\.md)#([\w\-]+)", document.read_text())
    ]
    assert links, "no links into BENCHMARKS.md found"
    assert [link for link in links if link[2] not in anchors[link[1]]] == []
