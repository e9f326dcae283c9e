"""File names (SPEC 1.1): which names the inbox imports, ignores or rejects, and their length.

Pure: names are text; bytes that were not UTF-8 arrive as surrogate escapes.
"""

from __future__ import annotations

from typing import Literal

from personsd.errors import FileRejected
from personsd.layers import split_name

# SPEC 1.1; with `.ID.retry.persons` (34 bytes at most) every derived name fits in 255.
MAX_NAME_BYTES = 200
_IGNORED_SUFFIXES = (".filepart", ".part", ".partial", ".tmp", ".uploading")


def classify_name(name: str) -> Literal["import", "ignore", "reject"]:
    """SPEC 1.1: what the inbox does with a file of this name.

    A name over 200 bytes still classifies by its suffix: it is imported, and
    the import rejects it (:func:`check_name`), so the partner gets reports.
    """
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") or base.endswith(_IGNORED_SUFFIXES):
        return "ignore"
    if split_name(base)[0].endswith(".persons"):  # with its layer suffixes (SPEC 11)
        return "import"
    return "reject"


def name_bytes(name: str) -> int:
    """Length of a file name in bytes, as the filesystem holds it (SPEC 1.1).

    Names are text; bytes that were not UTF-8 arrive as surrogate escapes
    (``os.fsdecode``) and count one byte each.
    """
    return sum(_char_bytes(char) for char in name) if not name.isascii() else len(name)


def _char_bytes(char: str) -> int:
    if "\udc80" <= char <= "\udcff":  # an undecodable byte, escaped
        return 1
    return len(char.encode("utf-8", "surrogatepass"))


def cut_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """The longest start of ``name`` of at most ``limit`` bytes, cut at a character boundary."""
    total = 0
    for index, char in enumerate(name):
        total += _char_bytes(char)
        if total > limit:
            return name[:index]
    return name


def check_name(name: str) -> None:
    """Raise the file-level error of SPEC 1.1 for a name personsd does not import.

    The length comes first: whatever else is wrong, a name over 200 bytes
    cannot be given reports named after it in full.
    """
    if name_bytes(name) > MAX_NAME_BYTES:
        raise FileRejected.format(f"File name is longer than {MAX_NAME_BYTES} bytes")
    if not split_name(name)[0].endswith(".persons"):
        raise FileRejected.format("File name must end with .persons")
