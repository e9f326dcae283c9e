"""Configuration of SPEC section 8: keys, defaults, refusals, environment, relative paths."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from personsd.config import (
    ArchiveConfig,
    ClusterConfig,
    Config,
    DatabaseConfig,
    ImportConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    NotifyConfig,
    PgpConfig,
    SftpConfig,
    load,
    parse,
)
from personsd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "personsd.toml"

FULL = """
[database]
url = "postgresql+psycopg://personsd@db.example:5432/persons"

[paths]
root = "/srv/personsd"

[sftp]
enabled = false
listen = "0.0.0.0:2022"
host_key = "/etc/personsd/host_key"

[import]
workers = 4
chunk_rows = 1000
settle_seconds = 2.5
rescan_seconds = 10
max_row_bytes = 4096
max_attempts = 5
carrier_lookup = "http"
carrier_lookup_url = "https://carrier.example/lookup"

[archive]
keep_days = 7

[limits]
inbox_bytes = 1000000
inbox_files = 20
connections_per_address = 3
connections_per_tenant = 4

[metrics]
listen = "127.0.0.1:9464"

[notify]
url = "https://hooks.example/personsd"
secret_file = "/etc/personsd/webhook.key"
timeout_seconds = 2.5

[cluster]
instance = "node-a"
lease_seconds = 12

[pgp]
home = "/etc/personsd/gnupg"

[log]
format = "json"
level = "debug"
"""


def write(directory: Path, text: str, name: str = "personsd.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_key_parses(tmp_path: Path) -> None:
    """Every key of SPEC 8 is read into the configuration."""
    path = write(tmp_path, FULL)
    expected = Config(
        database=DatabaseConfig(url="postgresql+psycopg://personsd@db.example:5432/persons"),
        root=Path("/srv/personsd"),
        sftp=SftpConfig(
            enabled=False, host="0.0.0.0", port=2022, host_key=Path("/etc/personsd/host_key")
        ),
        imports=ImportConfig(
            workers=4,
            chunk_rows=1000,
            settle_seconds=2.5,
            rescan_seconds=10.0,
            max_row_bytes=4096,
            max_attempts=5,
            carrier_lookup="http",
            carrier_lookup_url="https://carrier.example/lookup",
        ),
        archive=ArchiveConfig(keep_days=7.0),
        limits=LimitsConfig(
            inbox_bytes=1_000_000,
            inbox_files=20,
            connections_per_address=3,
            connections_per_tenant=4,
        ),
        metrics=MetricsConfig(host="127.0.0.1", port=9464),
        notify=NotifyConfig(
            url="https://hooks.example/personsd",
            secret_file=Path("/etc/personsd/webhook.key"),
            timeout_seconds=2.5,
        ),
        cluster=ClusterConfig(instance="node-a", lease_seconds=12.0),
        pgp=PgpConfig(home=Path("/etc/personsd/gnupg")),
        log=LogConfig(format="json", level="debug"),
        source=path,
    )
    assert expected == load(path, env={})


def test_defaults(tmp_path: Path) -> None:
    """An empty file gives SPEC 8's defaults; database and host key live under the root."""
    config = load(write(tmp_path, ""), env={})
    assert "sqlite:////var/lib/personsd/persons.db" == config.database.url
    assert Path("/var/lib/personsd") == config.root
    assert (True, "127.0.0.1:2222") == (config.sftp.enabled, config.sftp.listen)
    assert Path("/var/lib/personsd/ssh_host_ed25519_key") == config.sftp.host_key
    assert ImportConfig() == config.imports
    assert (2, 5000, 1.0, 30.0, 1048576, 3, "offline", "") == dataclasses.astuple(config.imports)
    assert ArchiveConfig(keep_days=30.0) == config.archive
    assert (107374182400, 1000, 10, 10) == dataclasses.astuple(config.limits)
    assert (False, "") == (config.metrics.enabled, config.metrics.listen)
    assert NotifyConfig(url="", secret_file=None, timeout_seconds=10.0) == config.notify
    assert ClusterConfig(instance="", lease_seconds=30.0) == config.cluster
    assert Path("/var/lib/personsd/state/pgp") == config.pgp_home
    assert LogConfig(format="auto", level="info") == config.log


def test_root_moves_default_database_and_host_key(tmp_path: Path) -> None:
    """Without explicit values, the database and the host key follow paths.root."""
    config = load(write(tmp_path, '[paths]\nroot = "/srv/p"\n'), env={})
    assert "sqlite:////srv/p/persons.db" == config.database.url
    assert Path("/srv/p/ssh_host_ed25519_key") == config.sftp.host_key


def test_example_config_documents_the_defaults() -> None:
    """config/personsd.toml holds every key, each at its default value."""
    assert dataclasses.replace(load(EXAMPLE, env={}), source=None) == parse(
        {}, base=Path("/"), env={}
    )
    text = EXAMPLE.read_text(encoding="utf-8")
    # FULL holds every key at a value other than its default, or test_every_key_parses fails.
    keys = [key for section in tomllib.loads(FULL).values() for key in section]
    for key in keys:
        assert f"\n{key} = " in text, key


REFUSED = {
    "unknown-section": ("[imports]\nworkers = 2\n", r"unknown section \[imports\]"),
    "unknown-key": ("[import]\nchunk_size = 2\n", r"\[import\] unknown key 'chunk_size'"),
    "section-not-a-table": ('log = "json"\n', r"\[log\] must be a table"),
    "http-lookup-without-url": (
        '[import]\ncarrier_lookup = "http"\n',
        r"\[import\] carrier_lookup_url",
    ),
    "nan-seconds": ("[import]\nsettle_seconds = nan\n", r"\[import\] settle_seconds"),
}


@pytest.mark.parametrize(("text", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refusal_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    """A refusal names its fault: unknown section or key, non-table section, URL-less http, nan."""
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), env={})


@pytest.mark.parametrize(
    ("section", "line"),
    [
        ("database", 'url = "mysql://x"'),
        ("database", "url = 5"),
        ("paths", 'root = ""'),
        ("paths", "root = 1"),
        ("sftp", 'enabled = "yes"'),
        ("sftp", 'listen = "localhost"'),
        ("sftp", 'listen = "127.0.0.1:70000"'),
        ("sftp", 'listen = ":2222"'),
        ("sftp", 'host_key = ""'),
        ("import", "workers = 0"),
        ("import", 'workers = "2"'),
        ("import", "workers = true"),
        ("import", "workers = 1.5"),
        ("import", "chunk_rows = 0"),
        ("import", "settle_seconds = -1"),
        ("import", 'settle_seconds = "1s"'),
        ("import", "rescan_seconds = 0"),
        ("import", "max_row_bytes = 10"),
        ("import", "max_attempts = 0"),
        ("import", 'carrier_lookup = "online"'),
        ("import", "carrier_lookup_url = 3"),
        ("archive", "keep_days = -1"),
        ("limits", "inbox_bytes = 0"),
        ("limits", 'inbox_files = "many"'),
        ("limits", "connections_per_address = 0"),
        ("limits", "connections_per_tenant = 1.5"),
        ("metrics", 'listen = "9464"'),
        ("metrics", "listen = 9464"),
        ("notify", 'url = "ftp://x"'),
        ("notify", "secret_file = 1"),
        ("notify", "timeout_seconds = 0"),
        ("cluster", 'instance = "a\\nb"'),
        ("cluster", "lease_seconds = -5"),
        ("pgp", "home = false"),
        ("log", 'format = "xml"'),
        ("log", 'level = "loud"'),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, section: str, line: str) -> None:
    """Each bad value is refused with a message naming its section and key."""
    key = line.split(" =")[0]
    path = write(tmp_path, f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError, match=rf"^\[{section}\] {key}: "):
        load(path, env={})


def test_metrics_ipv6_listen(tmp_path: Path) -> None:
    """metrics.listen takes HOST:PORT like sftp.listen, IPv6 in brackets."""
    config = load(write(tmp_path, '[metrics]\nlisten = "[::1]:9464"\n'), env={})
    assert (True, "::1", 9464, "[::1]:9464") == (
        config.metrics.enabled,
        config.metrics.host,
        config.metrics.port,
        config.metrics.listen,
    )


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    """`level = "INFO"` means info."""
    assert "info" == load(write(tmp_path, '[log]\nlevel = "INFO"\n'), env={}).log.level


def test_ipv6_listen(tmp_path: Path) -> None:
    """An IPv6 listen address is written in brackets."""
    config = load(write(tmp_path, '[sftp]\nlisten = "[::1]:2222"\n'), env={})
    assert ("::1", 2222, "[::1]:2222") == (config.sftp.host, config.sftp.port, config.sftp.listen)


def test_database_url_from_environment(tmp_path: Path) -> None:
    """PERSONSD_DATABASE_URL overrides database.url."""
    path = write(tmp_path, '[database]\nurl = "sqlite:////a/b.db"\n')
    url = "postgresql+psycopg://u:p@h/db"
    assert url == load(path, env={"PERSONSD_DATABASE_URL": url}).database.url


def test_bad_database_url_from_environment_is_named(tmp_path: Path) -> None:
    """A bad PERSONSD_DATABASE_URL is refused with the variable's name."""
    with pytest.raises(ConfigError, match="PERSONSD_DATABASE_URL"):
        load(write(tmp_path, ""), env={"PERSONSD_DATABASE_URL": "mysql://x"})


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """root, host_key and a relative SQLite URL resolve against the config file's directory."""
    etc = tmp_path / "etc"
    etc.mkdir()
    path = write(
        etc,
        '[database]\nurl = "sqlite:///db/p.db"\n[paths]\nroot = "../var"\n'
        '[sftp]\nhost_key = "keys/host"\n',
    )
    config = load(path, env={})
    etc = etc.resolve()
    assert etc.parent / "var" == config.root
    assert etc / "keys" / "host" == config.sftp.host_key
    assert f"sqlite:///{etc / 'db' / 'p.db'}" == config.database.url


def test_absolute_and_memory_sqlite_urls_are_kept(tmp_path: Path) -> None:
    """An absolute SQLite path and :memory: are not rebased."""
    for url in ("sqlite:////abs/p.db", "sqlite:///:memory:"):
        path = write(tmp_path, f'[database]\nurl = "{url}"\n')
        assert url == load(path, env={}).database.url


def test_load_from_environment_variable(tmp_path: Path) -> None:
    """Without a path, PERSONSD_CONFIG names the file."""
    path = write(tmp_path, "[import]\nworkers = 7\n")
    config = load(env={"PERSONSD_CONFIG": str(path)})
    assert (7, path) == (config.imports.workers, config.source)


def test_explicit_path_wins_over_environment(tmp_path: Path) -> None:
    """An explicit path (--config) is used even when PERSONSD_CONFIG is set."""
    path = write(tmp_path, "[import]\nworkers = 7\n")
    other = write(tmp_path, "[import]\nworkers = 9\n", name="other.toml")
    assert 7 == load(path, env={"PERSONSD_CONFIG": str(other)}).imports.workers


def test_no_file_gives_defaults() -> None:
    """Neither a path nor PERSONSD_CONFIG: the defaults, with no source file."""
    config = load(env={})
    assert (None, Path("/var/lib/personsd")) == (config.source, config.root)


def test_missing_file(tmp_path: Path) -> None:
    """A missing config file is a ConfigError naming the file."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        load(missing, env={})


def test_invalid_toml(tmp_path: Path) -> None:
    """Invalid TOML is a ConfigError naming the file and the parser's complaint."""
    path = write(tmp_path, "[import\nworkers = 2\n")
    with pytest.raises(ConfigError, match=f"{path}: invalid TOML"):
        load(path, env={})


def test_non_utf8_file(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is a ConfigError, not a traceback."""
    path = tmp_path / "personsd.toml"
    path.write_bytes(b'[log]\nlevel = "\xff"\n')
    with pytest.raises(ConfigError, match=str(path)):
        load(path, env={})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory given as the config file is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load(tmp_path, env={})


def test_source_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source path is absolute, so a SIGHUP reload works whatever the working directory."""
    write(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    assert tmp_path.resolve() / "personsd.toml" == load("personsd.toml", env={}).source
