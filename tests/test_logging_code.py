"""How product code logs (SPEC 9): one logger, event names only as ``Event`` constants.

The scan reads the source with :mod:`ast`, so a call split over several lines
(``log.warning(\\n    "x.y", ...)``) is found as well as a one-line one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from personsd.logging import Event

PRODUCT = Path(__file__).resolve().parent.parent / "daemon" / "personsd"
LEVELS = frozenset({"debug", "info", "warning", "error", "critical", "exception", "msg"})


def literal_events(source: str) -> list[tuple[int, str]]:
    """(line, name) of each ``<logger>.<level>("name", ...)`` call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def _product_files() -> list[Path]:
    files = [p for p in sorted(PRODUCT.rglob("*.py")) if "migrations" not in p.parts]
    assert PRODUCT / "service.py" in files
    return files


def test_the_scan_finds_literal_event_names_on_one_line_or_several() -> None:
    """The scanner sees literal names in any logger call, and not constants or other calls."""
    source = (
        'log.info("a.b", x=1)\n'
        "log.warning(\n"
        '    "c.d",\n'
        ")\n"
        'get_logger("personsd.x").error("e.f")\n'
        "log.info(Event.SFTP_LOGIN)\n"
        'parser.add_argument("--x")\n'
    )
    assert [(1, "a.b"), (2, "c.d"), (5, "e.f")] == literal_events(source)


def test_product_code_names_every_event_with_a_constant() -> None:
    """No product module writes an event name as a string literal: each is an Event constant."""
    literals = [
        (path.relative_to(PRODUCT).as_posix(), line, name)
        for path in _product_files()
        for line, name in literal_events(path.read_text(encoding="utf-8"))
    ]
    assert [] == literals


def test_product_code_uses_one_logger_and_no_private_structlog() -> None:
    """Loggers come from personsd.logging.get_logger; no import of structlog's private modules."""
    other_styles = re.compile(r"structlog\.get_logger\(|def _log\(|from structlog\._|structlog\._")
    found = [
        f"{path.relative_to(PRODUCT).as_posix()}:{number}: {line.strip()}"
        for path in _product_files()
        if path.name != "logging.py" or path.parent != PRODUCT
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if other_styles.search(line)
    ]
    assert [] == found
    private = re.compile(r"^\s*(from|import) structlog\._", re.MULTILINE)
    assert private.search((PRODUCT / "logging.py").read_text(encoding="utf-8")) is None


def test_extra_constants_stay_out_of_all() -> None:
    """Every constant beyond SPEC 9's list is a distinct name outside Event.ALL."""
    constants = {k: v for k, v in vars(Event).items() if k.isupper() and isinstance(v, str)}
    assert len(constants) == len(set(constants.values()))
    assert set(Event.ALL) <= set(constants.values())
    extra = set(constants.values()) - set(Event.ALL)
    assert set() == extra & set(Event.ALL)
    assert {"db.unavailable", "sftp.connection_error", "tenant.lookup_failed"} <= extra
