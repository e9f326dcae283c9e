"""The repository's own rules: pinned private APIs, a lock that matches pyproject, links that stay.

personsd overrides private methods of paramiko; it is pinned to the minor
version they were read against, and the tests here fail loudly, naming what
to re-read, as soon as another version is installed or the pin is widened.
(structlog is used through its public API only; see
test_logging.py::test_no_private_structlog_import.)
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


@dataclass(frozen=True, kw_only=True, slots=True)
class Use:
    """One private name personsd relies on: where it is, its parameters, and why we care."""

    target: str  # module:attribute.path
    parameters: tuple[str, ...] | None  # a callable's parameter names; None: an attribute
    why: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Checked:
    """A library's private surface as personsd uses it, read against one minor version."""

    minor: str
    uses: tuple[Use, ...]

    def recheck(self, library: str) -> str:
        names = "\n".join(f"  - {u.target}: {u.why}" for u in self.uses)
        return (
            f"Re-read these in {library}'s new release, then update CHECKED in "
            f"tests/test_tooling.py and the pin in pyproject.toml:\n{names}"
        )


# Re-read on every bump of paramiko: the overrides copy parts of
# these methods or depend on when paramiko calls them.
CHECKED = {
    "paramiko": Checked(
        minor="5.1",
        uses=(
            Use(
                target="paramiko.sftp:BaseSFTP._read_packet",
                parameters=("self",),
                why="overridden by TenantSftp: caps the packet size; returns (type, body)",
            ),
            Use(
                target="paramiko.sftp:BaseSFTP._send_server_version",
                parameters=("self",),
                why="overridden by TenantSftp: a VERSION reply without the check-file extension",
            ),
            Use(
                target="paramiko.sftp_server:SFTPServer._process",
                parameters=("self", "t", "request_number", "msg"),
                why="overridden by TenantSftp: handle caps, CLOSE of uploads, extended requests; "
                "then calls super() with the message rewound past the request id",
            ),
            Use(
                target="paramiko.sftp:BaseSFTP._read_all",
                parameters=("self", "n"),
                why="called by the _read_packet override",
            ),
            Use(
                target="paramiko.sftp:BaseSFTP._send_packet",
                parameters=("self", "t", "packet"),
                why="called by the _send_server_version override",
            ),
            Use(
                target="paramiko.sftp_server:SFTPServer._send_status",
                parameters=("self", "request_number", "code", "desc"),
                why="called by the _process override",
            ),
            Use(
                target="paramiko.sftp_server:SFTPServer.finish_subsystem",
                parameters=("self",),
                why="overridden by TenantSftp: closes uploads before paramiko ends the session",
            ),
            Use(
                target="paramiko.sftp_server:SFTPServer.__init__.file_table",
                parameters=None,
                why="TenantSftp reads and empties the handle tables (file_table, folder_table)",
            ),
            Use(
                target="paramiko.transport:Transport.__init__.auth_handler",
                parameters=None,
                why="sftp.server._authenticated reads transport.auth_handler.is_authenticated()",
            ),
            Use(
                target="paramiko.auth_handler:AuthHandler.is_authenticated",
                parameters=("self",),
                why="called through transport.auth_handler",
            ),
        ),
    ),
}


def _installed_minor(library: str) -> str:
    release = Version(importlib.metadata.version(library)).release
    return f"{release[0]}.{release[1]}"


def _resolve(target: str) -> Any:
    module_name, _, path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _use_holds(use: Use) -> bool:
    if use.parameters is None:
        # An instance attribute: assigned in the method named before it.
        owner, _, attribute = use.target.rpartition(".")
        source = inspect.getsource(_resolve(owner))
        return re.search(rf"\bself\.{attribute}\s*=", source) is not None
    try:
        found = tuple(inspect.signature(_resolve(use.target)).parameters)
    except AttributeError:
        return False
    return found == use.parameters


@pytest.mark.parametrize("library", sorted(CHECKED))
def test_overridden_private_apis_checked_against_installed_version(library: str) -> None:
    """The installed library is the minor version its private-API overrides were read against."""
    checked = CHECKED[library]
    installed = _installed_minor(library)
    assert checked.minor == installed, (
        f"{library} {installed} is installed; personsd's use of its private API was checked "
        f"against {checked.minor}. {checked.recheck(library)}"
    )


@pytest.mark.parametrize("library", sorted(CHECKED))
def test_private_apis_still_have_the_shape_we_override(library: str) -> None:
    """Every private method personsd overrides or calls exists with the parameters it had."""
    checked = CHECKED[library]
    broken = [use.target for use in checked.uses if not _use_holds(use)]
    assert [] == broken, f"changed in {library}: {broken}. {checked.recheck(library)}"


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def _declared() -> list[Requirement]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        found += [Requirement(r) for r in extra]
    return found


@pytest.mark.parametrize("library", sorted(CHECKED))
def test_pyproject_pins_the_checked_minor(library: str) -> None:
    """pyproject.toml allows exactly the minor version whose private API was checked."""
    minor = CHECKED[library].minor
    major, _, number = minor.partition(".")
    (declared,) = [r for r in _declared() if canonicalize_name(r.name) == library]
    assert {f">={minor}", f"<{major}.{int(number) + 1}"} == {str(s) for s in declared.specifier}


def _locked() -> Iterator[tuple[str, str, bool]]:
    """(name, version, hashed) of each pin in the lock file."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text(encoding="utf-8"))
    for entry in entries:
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", entry)
        if match:
            yield canonicalize_name(match[1]), match[2], "--hash=sha256:" in entry


def test_lock_pins_every_declared_requirement_within_its_range() -> None:
    """requirements.lock pins, with hashes, every pyproject requirement inside its range."""
    locked = {name: (version, hashed) for name, version, hashed in _locked()}
    wrong = []
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        version, hashed = locked.get(name, ("", False))
        if not version or not hashed or not requirement.specifier.contains(version):
            wrong.append(f"{requirement} -> {version or 'missing'}")
    assert [] == wrong, "run `make lock`"


def test_installed_versions_are_the_locked_ones() -> None:
    """The venv runs exactly the versions the lock pins (for the packages present here)."""
    differ = []
    for name, version, _ in _locked():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a platform-specific pin (e.g. Windows only)
        if Version(installed) != Version(version):
            differ.append(f"{name}: locked {version}, installed {installed}")
    assert [] == differ, "run `make venv` (the venv is rebuilt from the lock)"


# -- links ------------------------------------------------------------------

_SKIP_DIRS = {"build", "dist", "node_modules", "__pycache__", "data"}
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HTML = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
# A relative path quoted as code (`../shared/SPEC.md`) sends the reader there too.
_PATH_CODE = re.compile(r"`(\.\.?/[^`\s]+)`")


def _markdown_files() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*.md")):
        parts = path.relative_to(ROOT).parts[:-1]
        if any(p.startswith(".") or p in _SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        found.append(path)
    return found


def _links(text: str) -> list[str]:
    unfenced = _FENCE.sub("", text)
    prose = _CODE.sub("", unfenced)
    return [
        *_INLINE.findall(prose),
        *_REFERENCE.findall(prose),
        *_HTML.findall(prose),
        *_PATH_CODE.findall(unfenced),
    ]


def _outside(document: Path, target: str) -> str | None:
    """Why ``target``, linked from ``document``, is not a file of the repo; None when it is."""
    parts = urlsplit(target)
    if parts.scheme in ("http", "https", "mailto"):
        return None  # a web page, not a file of someone's disk
    if parts.scheme or parts.netloc:
        return f"{target}: a {parts.scheme or 'network'} link"
    if not parts.path:
        return None  # an anchor in the same document
    if parts.path.startswith("/"):
        return f"{target}: an absolute path"
    resolved = (document.parent / unquote(parts.path)).resolve()
    if not resolved.is_relative_to(ROOT):
        return f"{target}: outside the repository"
    if not resolved.exists():
        return f"{target}: no such file in the repository"
    return None


def test_markdown_finds_links_of_every_kind() -> None:
    """The link scanner sees inline, reference and HTML links and quoted paths, not code."""
    text = (
        '[a](../x.md) [b](y.md#part "title") `[c](code.md)` `../p.md`\n[d]: ../ref.md\n'
        "<a href='h.md'>h</a>\n```\n[e](fenced.md) `../f.md`\n```\n"
    )
    assert ["../x.md", "y.md#part", "../ref.md", "h.md", "../p.md"] == _links(text)


def test_no_markdown_link_points_outside_the_repository() -> None:
    """Every relative link of every Markdown file resolves to a file inside the repository."""
    files = _markdown_files()
    assert ROOT / "README.md" in files
    bad = [
        f"{path.relative_to(ROOT)}: {why}"
        for path in files
        for target in _links(path.read_text(encoding="utf-8"))
        if (why := _outside(path, target)) is not None
    ]
    assert [] == bad


# -- test references ----------------------------------------------------------

# `test_abuse.py::test_name` or `test_abuse.py::test_name[case-id]`, as docs/security.md cites them.
_TEST_REF = re.compile(r"\b(test_\w+\.py)::(test_\w+)(?:\[([^\]\s`]+)\])?")


def _dangling(ref: tuple[str, str, str]) -> bool:
    """Whether a cited test is not in tests/ (its function, and its case id when given)."""
    module, function, case = ref
    path = ROOT / "tests" / module
    if not path.is_file():
        return True
    source = path.read_text(encoding="utf-8")
    defined = {
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    return function not in defined or (bool(case) and f'"{case}"' not in source)


def test_test_reference_scanner_tells_cited_tests_that_exist_from_gone_ones() -> None:
    """A cited test is found by name, a cited case by its id; a renamed one is dangling."""
    flood = "test_a_flood_before_login_costs_no_memory"
    text = f"`test_abuse.py::{flood}[a-2-GiB-packet-after-the-banner]` `test_x.py::test_y`"
    refs = _TEST_REF.findall(text)
    assert [
        ("test_abuse.py", flood, "a-2-GiB-packet-after-the-banner"),
        ("test_x.py", "test_y", ""),
    ] == refs
    assert [False, True] == [_dangling(r) for r in refs]
    assert [False, True, True] == [
        _dangling(("test_abuse.py", flood, "")),
        _dangling(("test_abuse.py", flood, "a-3-GiB-packet")),
        _dangling(("test_abuse.py", "test_a_huge_packet_before_login_costs_no_memory", "")),
    ]


def test_every_test_the_docs_cite_exists() -> None:
    """A test named in a Markdown file (docs/security.md's table) is a test of tests/."""
    cited = sorted(
        {ref for path in _markdown_files() for ref in _TEST_REF.findall(path.read_text("utf-8"))}
    )
    assert len(cited) > 20  # the security table cites dozens
    assert [] == [
        f"{m}::{f}" + (f"[{c}]" if c else "") for m, f, c in cited if _dangling((m, f, c))
    ]
