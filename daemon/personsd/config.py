"""Configuration (SPEC section 8): a TOML file, validated once, into frozen values.

Unknown keys and bad values are refused with a message that names them
(``[import] chunk_rows: must be an integer >= 1, got 'x'``).

Over 400 lines on purpose: a dataclass per TOML section and the one parser that
checks every key; apart, a key's rule and its section would part.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personsd.errors import ConfigError

ENV_CONFIG = "PERSONSD_CONFIG"
ENV_DATABASE_URL = "PERSONSD_DATABASE_URL"
CARRIER_LOOKUPS = ("none", "offline", "http")
LOG_FORMATS = ("json", "console", "auto")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, kw_only=True, slots=True)
class DatabaseConfig:
    url: str = "sqlite:////var/lib/personsd/persons.db"


@dataclass(frozen=True, kw_only=True, slots=True)
class SftpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2222
    host_key: Path = Path("/var/lib/personsd/ssh_host_ed25519_key")

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportConfig:
    workers: int = 2
    chunk_rows: int = 5000
    settle_seconds: float = 1.0
    rescan_seconds: float = 30.0
    max_row_bytes: int = 1_048_576
    max_attempts: int = 3
    carrier_lookup: str = "offline"
    carrier_lookup_url: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ArchiveConfig:
    keep_days: float = 30.0


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsConfig:
    """Per-tenant caps of SPEC 6 (``connections_per_address`` is per client address)."""

    inbox_bytes: int = 100 * 1024**3
    inbox_files: int = 1000
    connections_per_address: int = 10
    connections_per_tenant: int = 10


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsConfig:
    """The HTTP endpoint of SPEC 10; ``host`` None means off."""

    host: str | None = None
    port: int = 0

    @property
    def enabled(self) -> bool:
        return self.host is not None

    @property
    def listen(self) -> str:
        if self.host is None:
            return ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class NotifyConfig:
    """Webhooks of SPEC 10: the default URL (empty: off) and the HMAC key file."""

    url: str = ""
    secret_file: Path | None = None
    timeout_seconds: float = 10.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterConfig:
    """SPEC 12: ``instance`` empty means host:pid:start time, chosen at start."""

    instance: str = ""
    lease_seconds: float = 30.0


@dataclass(frozen=True, kw_only=True, slots=True)
class PgpConfig:
    """SPEC 11: the GnuPG home holding personsd's key pair (None: <root>/state/pgp)."""

    home: Path | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LogConfig:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    root: Path = Path("/var/lib/personsd")
    sftp: SftpConfig = field(default_factory=SftpConfig)
    imports: ImportConfig = field(default_factory=ImportConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pgp: PgpConfig = field(default_factory=PgpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None  # the file it was read from, for SIGHUP reloads

    # The tenant tree and personsd's own state, all under paths.root so that
    # claiming a file is a rename on one filesystem.
    @property
    def tenants_dir(self) -> Path:
        return self.root / "tenants"

    def inbox(self, tenant: str) -> Path:
        return self.tenants_dir / tenant / "inbox"

    def outbox(self, tenant: str) -> Path:
        return self.tenants_dir / tenant / "outbox"

    def validate_box(self, tenant: str) -> Path:
        """Validate-only drops (SPEC 11)."""
        return self.tenants_dir / tenant / "validate"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def work_dir(self) -> Path:
        """Claimed files being imported, and the partial reports of each import."""
        return self.state_dir / "work"

    @property
    def archive_dir(self) -> Path:
        return self.state_dir / "archive"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def pgp_home(self) -> Path:
        return self.pgp.home if self.pgp.home is not None else self.state_dir / "pgp"


_SECTIONS: dict[str, set[str]] = {
    "database": {"url"},
    "paths": {"root"},
    "sftp": {"enabled", "listen", "host_key"},
    "import": {
        "workers",
        "chunk_rows",
        "settle_seconds",
        "rescan_seconds",
        "max_row_bytes",
        "max_attempts",
        "carrier_lookup",
        "carrier_lookup_url",
    },
    "archive": {"keep_days"},
    "limits": {"inbox_bytes", "inbox_files", "connections_per_address", "connections_per_tenant"},
    "metrics": {"listen"},
    "notify": {"url", "secret_file", "timeout_seconds"},
    "cluster": {"instance", "lease_seconds"},
    "pgp": {"home"},
    "log": {"format", "level"},
}


def _fail(section: str, key: str, problem: str, value: Any) -> ConfigError:
    return ConfigError(f"[{section}] {key}: {problem}, got {value!r}")


def _int(section: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(section, key, f"must be an integer >= {minimum}", value)
    return value


def _number(section: str, key: str, value: Any, minimum: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise _fail(section, key, f"must be a number >= {minimum}", value)
    return float(value)


def _positive(section: str, key: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _fail(section, key, "must be a number > 0", value)
    return float(value)


def _choice(section: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(section, key, f"must be one of {', '.join(choices)}", value)
    return str(value)


def _str(section: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(section, key, "must be a string", value)
    return value


def _path(section: str, key: str, value: Any, base: Path) -> Path:
    text = _str(section, key, value)
    if not text:
        raise _fail(section, key, "must not be empty", value)
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _listen(value: Any, section: str = "sftp") -> tuple[str, int]:
    text = _str(section, "listen", value)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(section, "listen", "must be HOST:PORT", value)
    return host, int(port)


def _http_url(section: str, key: str, value: Any) -> str:
    url = _str(section, key, value)
    if url and not url.startswith(("http://", "https://")):
        raise _fail(section, key, "must be an http(s) URL or empty", value)
    return url


def _sqlite_url(url: str, base: Path) -> str:
    """Make a relative SQLite path relative to the config file, as SPEC 8 says."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////"):
        rest = url[len(prefix) :]
        if rest and rest != ":memory:":
            return prefix + str((base / rest).resolve())
    return url


def _database_url(section: str, key: str, value: Any, base: Path) -> str:
    url = _str(section, key, value)
    if not (url.startswith("sqlite:") or url.startswith("postgresql")):
        raise _fail(section, key, "must be a sqlite:/// or postgresql+psycopg:// URL", value)
    return _sqlite_url(url, base)


def parse(
    data: Mapping[str, Any],
    *,
    base: Path,
    env: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    env = os.environ if env is None else env
    for section, table in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{section}] must be a table")
        unknown = sorted(set(table) - _SECTIONS[section])
        if unknown:
            raise ConfigError(f"[{section}] unknown key {unknown[0]!r}")

    db = dict(data.get("database", {}))
    paths = dict(data.get("paths", {}))
    sftp = dict(data.get("sftp", {}))
    imp = dict(data.get("import", {}))
    arch = dict(data.get("archive", {}))
    lim = dict(data.get("limits", {}))
    met = dict(data.get("metrics", {}))
    ntf = dict(data.get("notify", {}))
    clu = dict(data.get("cluster", {}))
    pgp = dict(data.get("pgp", {}))
    log = dict(data.get("log", {}))

    root = _path("paths", "root", paths.get("root", "/var/lib/personsd"), base)
    default_url = f"sqlite:///{root / 'persons.db'}"
    url = _database_url("database", "url", db.get("url", default_url), base)
    if env.get(ENV_DATABASE_URL):
        url = _database_url("env", ENV_DATABASE_URL, env[ENV_DATABASE_URL], base)

    enabled = sftp.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _fail("sftp", "enabled", "must be true or false", enabled)
    host, port = _listen(sftp.get("listen", "127.0.0.1:2222"))
    host_key = _path(
        "sftp", "host_key", sftp.get("host_key", str(root / "ssh_host_ed25519_key")), base
    )

    carrier = _choice(
        "import", "carrier_lookup", imp.get("carrier_lookup", "offline"), CARRIER_LOOKUPS
    )
    carrier_url = _str("import", "carrier_lookup_url", imp.get("carrier_lookup_url", ""))
    if carrier == "http" and not carrier_url.startswith(("http://", "https://")):
        raise _fail(
            "import",
            "carrier_lookup_url",
            'must be an http(s) URL when carrier_lookup = "http"',
            carrier_url,
        )

    metrics_listen = _str("metrics", "listen", met.get("listen", ""))
    metrics = MetricsConfig()
    if metrics_listen:
        metrics_host, metrics_port = _listen(metrics_listen, "metrics")
        metrics = MetricsConfig(host=metrics_host, port=metrics_port)
    secret = _str("notify", "secret_file", ntf.get("secret_file", ""))
    instance = _str("cluster", "instance", clu.get("instance", ""))
    if instance != instance.strip() or any(ord(c) < 32 or ord(c) == 127 for c in instance):
        raise _fail(
            "cluster", "instance", "must be printable, without surrounding spaces", instance
        )
    pgp_home = _str("pgp", "home", pgp.get("home", ""))
    default = LimitsConfig()

    return Config(
        database=DatabaseConfig(url=url),
        root=root,
        sftp=SftpConfig(enabled=enabled, host=host, port=port, host_key=host_key),
        imports=ImportConfig(
            workers=_int("import", "workers", imp.get("workers", 2), 1),
            chunk_rows=_int("import", "chunk_rows", imp.get("chunk_rows", 5000), 1),
            settle_seconds=_number("import", "settle_seconds", imp.get("settle_seconds", 1.0), 0),
            rescan_seconds=_number("import", "rescan_seconds", imp.get("rescan_seconds", 30), 0.1),
            max_row_bytes=_int("import", "max_row_bytes", imp.get("max_row_bytes", 1_048_576), 64),
            max_attempts=_int("import", "max_attempts", imp.get("max_attempts", 3), 1),
            carrier_lookup=carrier,
            carrier_lookup_url=carrier_url,
        ),
        archive=ArchiveConfig(
            keep_days=_number("archive", "keep_days", arch.get("keep_days", 30), 0)
        ),
        limits=LimitsConfig(
            inbox_bytes=_int(
                "limits", "inbox_bytes", lim.get("inbox_bytes", default.inbox_bytes), 1
            ),
            inbox_files=_int(
                "limits", "inbox_files", lim.get("inbox_files", default.inbox_files), 1
            ),
            connections_per_address=_int(
                "limits",
                "connections_per_address",
                lim.get("connections_per_address", default.connections_per_address),
                1,
            ),
            connections_per_tenant=_int(
                "limits",
                "connections_per_tenant",
                lim.get("connections_per_tenant", default.connections_per_tenant),
                1,
            ),
        ),
        metrics=metrics,
        notify=NotifyConfig(
            url=_http_url("notify", "url", ntf.get("url", "")),
            secret_file=_path("notify", "secret_file", secret, base) if secret else None,
            timeout_seconds=_positive("notify", "timeout_seconds", ntf.get("timeout_seconds", 10)),
        ),
        cluster=ClusterConfig(
            instance=instance,
            lease_seconds=_positive("cluster", "lease_seconds", clu.get("lease_seconds", 30)),
        ),
        pgp=PgpConfig(home=_path("pgp", "home", pgp_home, base) if pgp_home else None),
        log=LogConfig(
            format=_choice("log", "format", log.get("format", "auto"), LOG_FORMATS),
            level=_choice("log", "level", str(log.get("level", "info")).lower(), LOG_LEVELS),
        ),
        source=source,
    )


def load(path: Path | str | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read the config from ``path``, else ``$PERSONSD_CONFIG``, else the defaults."""
    env = os.environ if env is None else env
    if path is None and env.get(ENV_CONFIG):
        path = env[ENV_CONFIG]
    if path is None:
        return parse({}, base=Path.cwd(), env=env)
    file = Path(path).expanduser().resolve()
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    return parse(data, base=file.parent, env=env, source=file)
