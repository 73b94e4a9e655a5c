"""Which files in a folder of images are images: the walk shared by ``run`` over its inputs and by training over a
folder of labelled images (hidden files and macOS's zip leftovers skipped, unreadable folders reported)."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".pgm", ".ppm")  # Pillow reads all


HIDDEN_FOLDERS = frozenset({"__MACOSX"})  # what macOS's zip leaves beside the files (AppleDouble "._*" copies)


def is_hidden(relative: str | Path) -> bool:
    """True when a part of ``relative`` starts with "." (.ipynb_checkpoints, .git, macOS's ._ files) or is __MACOSX:
    such entries are never images of the user's, and shell globs skip the dotted ones too."""
    return any(part.startswith(".") or part in HIDDEN_FOLDERS for part in Path(relative).parts)


def is_image_file(path: str | Path, root: str | Path) -> bool:
    """Whether a walk through the user's image folder ``root`` takes ``path``: an image by its extension (any case),
    not hidden below ``root``, and a regular file (reading a FIFO waits for a writer forever). `run`'s folders and
    `train --data` walk alike."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path.relative_to(root)) and path.is_file()


def walk_folder(root: str | Path, follow_links: bool = False) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """``os.walk`` through the user's image folder ``root``: (each folder with its file names, one line per folder
    the walk could not list). os.walk, and so torchvision's scan, skips a folder it cannot list (no read permission,
    an I/O error) without a word, and its images went missing from ``run``'s answers and from training. Hidden
    folders are not problems: the walks leave them out anyway. (A symbolic-link loop ends without an error: at its
    depth limit os.walk reads the link as a file.)"""
    problems: list[str] = []

    def note(error: OSError) -> None:
        if not is_hidden(Path(error.filename).relative_to(root)):
            problems.append(f"{error.filename}: cannot read the folder ({error.strerror}); its images were left out")

    entries = [(folder, files) for folder, _, files in os.walk(root, onerror=note, followlinks=follow_links)]
    return entries, problems
