"""Reports under artifacts/ as text: JSON, JSON lines and markdown tables (no torch, no matplotlib; ``plots`` draws\nthe PNGs)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from vggdeploy.files import atomic_path


def readable(text: str) -> str:
    """``text`` as valid UTF-8, with each byte of a file name that is not UTF-8 written as the four characters
    ``\\xNN``. Python keeps such bytes as lone surrogates, which a UTF-8 stdout refuses to print (``run`` lost every
    answer to an internal error) and strict JSON parsers refuse to read (nlohmann's: "surrogate U+DC00..U+DFFF must
    follow U+D800..U+DBFF")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_readable_character(character) for character in text)
    return text


def _readable_character(character: str) -> str:
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte the file name held (the file system's surrogateescape decoding)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if 0xD800 <= code <= 0xDFFF else character


def json_safe(value):
    """``value`` as any strict JSON parser reads it: every NaN and infinity as None (JSON has neither, and
    JavaScript's ``JSON.parse`` and ``jq`` refuse Python's ``NaN``; the report's text says which figure was not
    finite), every string ``readable``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, dict):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def to_json(value, **options) -> str:
    """``value`` as strict JSON (``json_safe``); ``options`` go to ``json.dumps`` (indent, sort_keys)."""
    return json.dumps(json_safe(value), allow_nan=False, **options)


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(to_json(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(readable(text), encoding="utf-8")


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    write_text(path, "".join(to_json(row) + "\n" for row in rows))


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return str(value).replace("|", "\\|")  # a bare | would split the cell

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
