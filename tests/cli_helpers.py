"""Shared plumbing of the CLI acceptance tests: a site (config + root) and its reports.

A :class:`Site` is one personsd installation in a test's tmp dir, driven in
process through ``click.testing.CliRunner`` (fast) or, for the few tests that
must see the real console script, through ``python -m personsd``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from conftest import database_url
from personsd.cli import main

FIXED_COLUMNS = ["line", "row", "error_class", "error_message", "field", "value"]
EXPORT_COLUMNS = ["person_id", "person_key", "external_person_id", "mdn", "vibes_device_id"]
# The environment a test must not inherit from the shell that runs pytest.
CLEAN_ENV: dict[str, str | None] = {"PERSONSD_CONFIG": None, "PERSONSD_DATABASE_URL": None}


def toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(text)


def write_config(
    directory: Path,
    db_url: str,
    *,
    name: str = "personsd.toml",
    carrier: str = "none",
    carrier_url: str = "",
    extra_import: Mapping[str, Any] | None = None,
) -> Path:
    """The TOML config of a test site: relative root ``var``, JSON logs."""
    lines = [
        "[paths]",
        'root = "var"',
        "[database]",
        f"url = {toml_string(db_url)}",
        "[import]",
        f"carrier_lookup = {toml_string(carrier)}",
    ]
    if carrier_url:
        lines.append(f"carrier_lookup_url = {toml_string(carrier_url)}")
    for key, value in (extra_import or {}).items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines += ["[sftp]", f"host_key = {toml_string('var/host_key')}", "[log]", 'format = "json"']
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True, kw_only=True, slots=True)
class Imported:
    """One ``personsd import`` as the partner sees it: exit code, summary, errors.csv."""

    exit_code: int
    summary: dict[str, Any]
    errors_header: list[str]
    errors: list[list[str]]
    stdout: str

    def error_dicts(self) -> list[dict[str, str]]:
        """The fixed columns of each errors.csv line, by name."""
        return [dict(zip(FIXED_COLUMNS, line[:6], strict=True)) for line in self.errors]

    def errors_at(self) -> list[tuple[str, str, str, str, str, str]]:
        """(line, row, class, message, field, value) of each errors.csv line."""
        return [(a, b, c, d, e, f) for a, b, c, d, e, f, *_ in self.errors]


@dataclass(frozen=True, kw_only=True, slots=True)
class Site:
    """One personsd installation under a test's tmp dir."""

    home: Path
    config: Path
    db_url: str
    runner: CliRunner = field(default_factory=lambda: CliRunner(env=dict(CLEAN_ENV)))

    @property
    def root(self) -> Path:
        return self.home / "var"

    def outbox(self, tenant: str) -> Path:
        return self.root / "tenants" / tenant / "outbox"

    def inbox(self, tenant: str) -> Path:
        return self.root / "tenants" / tenant / "inbox"

    def cli(
        self,
        *args: str,
        input: str | bytes | None = None,
        expect: int | None = 0,
        env: Mapping[str, str | None] | None = None,
        config: bool = True,
        catch: bool = False,
    ) -> Result:
        """Run ``personsd [--config FILE] ARGS`` in process; check the exit code.

        An exception escaping the command fails the test, unless ``catch``: then it is
        in ``result.exception`` (as a real process would print a traceback and exit 1).
        """
        argv = (["--config", str(self.config)] if config else []) + list(args)
        result = self.runner.invoke(main, argv, input=input, env=env, catch_exceptions=catch)
        if expect is not None:
            assert expect == result.exit_code, (argv, result.output)
        return result

    def variant(
        self,
        *,
        carrier: str = "none",
        carrier_url: str = "",
        extra_import: Mapping[str, Any] | None = None,
    ) -> Site:
        """The same installation (root, database) under other ``[import]`` settings."""
        settings = json.dumps([carrier, carrier_url, dict(extra_import or {})], sort_keys=True)
        name = f"personsd-{hashlib.sha1(settings.encode()).hexdigest()[:12]}.toml"
        config = write_config(
            self.home,
            self.db_url,
            name=name,
            carrier=carrier,
            carrier_url=carrier_url,
            extra_import=extra_import,
        )
        return Site(home=self.home, config=config, db_url=self.db_url)

    def add_tenant(self, name: str = "acme", fields: Sequence[Sequence[str]] = ()) -> None:
        """A tenant with custom fields: each ``(NAME, TYPE, *options)`` for ``fields add``."""
        self.cli("tenants", "add", name)
        for name_type_rest in fields:
            field_name, field_type, *rest = name_type_rest
            self.cli("fields", "add", "--tenant", name, field_name, "--type", field_type, *rest)

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.home / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def import_file(self, path: Path, tenant: str = "acme", *, expect: int = 0) -> Imported:
        """``personsd import PATH --tenant T`` and what its outbox then holds."""
        result = self.cli("import", str(path), "--tenant", tenant, expect=expect)
        return self.imported(result.exit_code, result.stdout, tenant)

    def imported(self, exit_code: int, stdout: str, tenant: str) -> Imported:
        summary = json.loads(stdout)
        outbox = self.outbox(tenant)
        published = json.loads(
            (outbox / f"{summary['file']}.{summary['import_id']}.summary.json").read_text()
        )
        assert published == summary
        text = (outbox / summary["reports"]["errors"]).read_bytes().decode("utf-8")
        lines = list(csv.reader(io.StringIO(text, newline="")))
        return Imported(
            exit_code=exit_code,
            summary=summary,
            errors_header=lines[0],
            errors=lines[1:],
            stdout=stdout,
        )

    def import_bytes(
        self, name: str, data: bytes | str, tenant: str = "acme", *, expect: int = 0
    ) -> Imported:
        return self.import_file(self.write(name, data), tenant, expect=expect)

    def export_text(self, tenant: str = "acme") -> str:
        return self.cli("persons", "export", "--tenant", tenant).stdout

    def export(self, tenant: str = "acme") -> list[dict[str, str]]:
        """Every person of the tenant as ``persons export`` shows it."""
        return list(csv.DictReader(io.StringIO(self.export_text(tenant), newline="")))

    def by_external_id(self, tenant: str = "acme") -> dict[str, dict[str, str]]:
        return {p["external_person_id"]: p for p in self.export(tenant)}

    def subprocess(
        self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """The real thing: ``python -m personsd --config FILE ARGS`` in a child process."""
        child_env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        child_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "personsd", "--config", str(self.config), *args],
            input=input,
            capture_output=True,
            env=child_env,
            cwd=self.home,
            timeout=60,
            check=False,
        )


def assert_clean_exit(result: Result, code: int) -> None:
    """The command stopped on purpose with ``code`` and a message, not on a traceback."""
    assert code == result.exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stderr.startswith("personsd: "), result.stderr


def make_site(
    home: Path,
    db_url: str,
    *,
    carrier: str = "none",
    carrier_url: str = "",
    extra_import: Mapping[str, Any] | None = None,
    init: bool = True,
) -> Site:
    """A site in ``home`` with its config written and (by default) ``personsd init`` run."""
    home.mkdir(parents=True, exist_ok=True)
    config = write_config(
        home, db_url, carrier=carrier, carrier_url=carrier_url, extra_import=extra_import
    )
    site = Site(home=home, config=config, db_url=db_url)
    if init:
        site.cli("init")
    return site


def shared_database(kind: str, directory: Path) -> AbstractContextManager[str]:
    """A database URL for tests that share one installation (module-scoped fixtures)."""
    return database_url(kind, directory)
