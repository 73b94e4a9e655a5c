"""The documented examples: ``console`` blocks of README.md and docs/*.md, read as ``$ command`` lines, each followed by
the output it prints, so that a test can run them and hold the documents to what the commands really say.

Every console block is marked on the line above it, so that none goes unrun:

- ``<!-- example: exact -->``: each documented output line must appear, as written, in the real output;
- ``<!-- example: figures vary -->``: the same with every number and Fashion-MNIST class name free (the example
  shows a longer run than a test can afford, so accuracies, times, counts and the classes confused differ, while
  every other word and the order of the lines must not).

Documented lines must appear in the real output in their order; real lines in between (progress bars, lines the
document cuts with a ``...`` line) are allowed, ``...`` inside a line stands for the text the document left out, and
runs of spaces count as one (columns widen with the numbers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vggdeploy.data.fashion_mnist import CLASS_NAMES

MARKER = re.compile(r"^<!-- example: (exact|figures vary) -->$")
CLASS_NAME = re.compile("|".join(re.escape(name) for name in sorted(CLASS_NAMES, key=len, reverse=True)))
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


@dataclass(frozen=True)
class Command:
    line: str  # what follows "$ "
    output: tuple[str, ...]  # the documented lines it prints, "..." lines left out


@dataclass(frozen=True)
class Example:
    source: str  # file:line of the block
    mode: str  # "exact" or "figures vary"
    commands: tuple[Command, ...]


def examples_in(path: Path, root: Path) -> list[Example]:
    """Every console block of ``path``; an unmarked one raises ValueError naming it."""
    lines = path.read_text().splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.strip() != "```console":
            continue
        where = f"{path.relative_to(root)}:{index + 1}"
        marker = MARKER.match(lines[index - 1].strip()) if index else None
        if marker is None:
            raise ValueError(f"{where}: a console block without an <!-- example: exact|figures vary --> marker")
        end = lines.index("```", index + 1)
        found.append(Example(where, marker.group(1), _commands(lines[index + 1 : end])))
    return found


def _commands(block: list[str]) -> tuple[Command, ...]:
    commands: list[Command] = []
    for line in block:
        if line.startswith("$ "):
            commands.append(Command(line[2:], ()))
        elif commands and line.strip() and line.strip() != "...":
            last = commands[-1]
            commands[-1] = Command(last.line, (*last.output, line))
    return tuple(commands)


def normalised(line: str, figures_vary: bool) -> str:
    text = " ".join(line.split())
    return NUMBER.sub("#", CLASS_NAME.sub("<class>", text)) if figures_vary else text


def missing_lines(documented: tuple[str, ...], real: str, figures_vary: bool) -> list[str]:
    """The documented lines not found, in order, among the real output's lines (empty when all are)."""
    real_lines = [normalised(part, figures_vary) for line in real.splitlines() for part in line.split("\r")]
    position = 0
    missing = []
    for line in documented:
        parts = normalised(line, figures_vary).split("...")  # "..." inside a line: the document shortened it
        wanted = re.compile(".*".join(re.escape(part) for part in parts))
        at = next((i for i in range(position, len(real_lines)) if wanted.fullmatch(real_lines[i])), None)
        if at is None:
            missing.append(line)
        else:
            position = at + 1
    return missing
