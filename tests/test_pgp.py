"""OpenPGP files through the real gpg (SPEC 7, 11): decrypt, verify, never keep plain text."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cli_helpers import Site, toml_string, write_config
from engine_helpers import add_tenant, make_config, new_tenant_name, published, run_import
from layer_helpers import Keys, files_holding, gzip_bytes, with_pgp_home
from personsd import importer, layers, pgp
from personsd.config import Config
from personsd.store import db
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx

# Values that appear only in the plain content (never in a report: every row succeeds).
MARKERS = [b"zq-secret-%02d" % i for i in range(30)]
PLAIN = b"external_person_id,nick\n" + b"".join(m + b",abc\n" for m in MARKERS)
CANNOT = pgp.CANNOT_DECRYPT
NOT_SIGNED = pgp.NOT_SIGNED


@dataclass(frozen=True, kw_only=True, slots=True)
class Env:
    engine: Engine
    cfg: Config
    root: Path
    tenant: str
    tenant_id: int
    files: Path


@pytest.fixture
def env(db_url: str, tmp_path: Path, pgp_keys: Keys) -> Iterator[Env]:
    engine = db.connect(db_url)
    db.upgrade(engine)
    root = tmp_path / "root"
    cfg = with_pgp_home(make_config(root, db_url, chunk_rows=7), pgp_keys)
    tenant = new_tenant_name()
    tenant_id, _ = add_tenant(engine, tenant)
    files = tmp_path / "files"
    files.mkdir()
    yield Env(engine=engine, cfg=cfg, root=root, tenant=tenant, tenant_id=tenant_id, files=files)
    engine.dispose()


def _import(env: Env, name: str, data: bytes) -> dict[str, object]:
    path = env.files / name
    path.write_bytes(data)
    outcome = run_import(env.engine, env.cfg, env.tenant, path)
    return published(env.cfg, env.tenant, outcome).summary


def _verify_with(env: Env, keys: Keys, home: Path, fingerprint: str) -> None:
    armored = keys.public(home, fingerprint).decode()
    with write_tx(env.engine) as conn:
        store_tenants.set_pgp_verify_key(conn, env.tenant_id, armored, fingerprint)


def _file_error(summary: dict[str, object]) -> object:
    return summary["file_error"]


def _rejected(message: str) -> dict[str, str]:
    return {"class": "PersonErrors::InvalidImportFileFormat", "message": message}


@pytest.mark.parametrize(
    ("suffix", "armor", "expected_layers"),
    [
        (".pgp", False, ["pgp"]),
        (".gpg", False, ["pgp"]),
        (".asc", True, ["pgp"]),
        (".gz.pgp", False, ["pgp", "gzip"]),
    ],
)
def test_a_file_encrypted_to_personsd_is_imported_and_no_plain_text_stays(
    env: Env, pgp_keys: Keys, suffix: str, armor: bool, expected_layers: list[str]
) -> None:
    """SPEC 11: encrypted to our key → imported; afterwards no plain text under paths.root."""
    inner = gzip_bytes(PLAIN) if suffix.startswith(".gz") else PLAIN
    summary = _import(env, f"nightly.persons{suffix}", pgp_keys.encrypt(inner, armor=armor))
    assert ("completed", len(MARKERS), expected_layers) == (
        summary["status"],
        summary["rows"]["created"],  # type: ignore[index]
        summary["layers"],
    )
    assert [] == files_holding(env.root, MARKERS)


def test_a_file_encrypted_to_another_key_cannot_be_decrypted(env: Env, pgp_keys: Keys) -> None:
    """SPEC 11: a message for someone else's key → `File cannot be decrypted`, nothing applied."""
    data = pgp_keys.encrypt(PLAIN, to=pgp_keys.stranger)
    summary = _import(env, "nightly.persons.pgp", data)
    assert ("rejected", _rejected(CANNOT), 0) == (
        summary["status"],
        _file_error(summary),
        summary["rows"]["total"],  # type: ignore[index]
    )
    assert [] == files_holding(env.root, MARKERS)


@pytest.mark.parametrize(
    "data",
    [b"not an OpenPGP message\n", b""],
    ids=["garbage", "empty"],
)
def test_what_is_not_an_encrypted_message_cannot_be_decrypted(env: Env, data: bytes) -> None:
    """SPEC 11: garbage or nothing under a `.pgp` name → `File cannot be decrypted`."""
    assert _rejected(CANNOT) == _file_error(_import(env, "x.persons.pgp", data))


def test_a_corrupt_gzip_inside_pgp_is_rejected_and_its_copy_removed(
    env: Env, pgp_keys: Keys
) -> None:
    """SPEC 11: decrypted fine, decompressed badly → `Compressed file is corrupt`, no copy left."""
    summary = _import(env, "x.persons.gz.pgp", pgp_keys.encrypt(gzip_bytes(PLAIN)[:-9]))
    assert (_rejected(layers.CORRUPT), ["pgp", "gzip"]) == (_file_error(summary), summary["layers"])
    assert [] == sorted(p.name for p in env.cfg.work_dir.rglob("decrypted*"))


def test_a_signed_but_unencrypted_message_cannot_be_decrypted(env: Env, pgp_keys: Keys) -> None:
    """SPEC 11: only a message encrypted to us is accepted, not a merely signed one."""
    data = pgp_keys.encrypt(PLAIN, sign_only=True)
    assert _rejected(CANNOT) == _file_error(_import(env, "x.persons.pgp", data))
    assert [] == files_holding(env.root, MARKERS)


@pytest.mark.parametrize(
    ("signer", "stranger_known", "expected"),
    [
        (None, False, NOT_SIGNED),
        ("stranger", False, NOT_SIGNED),
        ("stranger", True, NOT_SIGNED),
        ("partner", False, None),
    ],
    ids=["unsigned", "unknown-signer", "known-wrong-signer", "partner"],
)
def test_with_a_verify_key_only_the_partners_signature_is_accepted(
    env: Env, pgp_keys: Keys, signer: str | None, stranger_known: bool, expected: str | None
) -> None:
    """SPEC 11: with a verify key: unsigned or wrong signer → rejected; the partner's → imported."""
    _verify_with(env, pgp_keys, pgp_keys.partner_home, pgp_keys.partner)
    if stranger_known:  # another tenant's verify key: in gpg's keyring, still the wrong one
        pgp.import_key(
            env.cfg.pgp_home, pgp_keys.public(pgp_keys.stranger_home, "stranger").decode()
        )
    summary = _import(
        env, "nightly.persons.gz.pgp", pgp_keys.encrypt(gzip_bytes(PLAIN), sign_as=signer)
    )
    if expected is None:
        assert ("completed", len(MARKERS)) == (summary["status"], summary["rows"]["created"])  # type: ignore[index]
    else:
        assert ("rejected", _rejected(expected)) == (summary["status"], _file_error(summary))
    assert [] == files_holding(env.root, MARKERS)


def test_without_a_verify_key_a_signature_is_not_required(env: Env, pgp_keys: Keys) -> None:
    """SPEC 11: a tenant without a verify key may send signed (by anyone) or unsigned files."""
    summary = _import(env, "a.persons.pgp", pgp_keys.encrypt(PLAIN, sign_as="stranger"))
    assert "completed" == summary["status"]


@pytest.mark.parametrize("lost", [False, True], ids=["kept", "lost"])
def test_the_decrypted_copy_is_private_reused_on_resume_and_removed(
    env: Env, pgp_keys: Keys, monkeypatch: pytest.MonkeyPatch, lost: bool
) -> None:
    """SPEC 11: the plain copy lives in state/work (0600), is reused on resume (or made
    again when gone), and is deleted when the import ends."""
    path = env.files / "nightly.persons.pgp"
    path.write_bytes(pgp_keys.encrypt(PLAIN))
    import_id = importer.create(env.engine, tenant=env.tenant, path=path, source="cli")
    stop = threading.Event()
    with pytest.raises(importer.Interrupted):
        importer.run(env.engine, env.cfg, import_id, stop=stop, on_chunk=lambda *_: stop.set())
    copy = layers.decrypted_copy(env.cfg.work_dir / str(import_id))
    assert (0o600, PLAIN) == (stat.S_IMODE(copy.stat().st_mode), copy.read_bytes())
    assert not copy.is_relative_to(env.cfg.tenants_dir)
    assert [str(copy.relative_to(env.root))] == files_holding(env.root, MARKERS)
    if lost:
        copy.unlink()
    calls: list[Path] = []
    real = pgp.decrypt

    def counted(home: Path, source: Path, target: Path, **kw: object) -> None:
        calls.append(source)
        real(home, source, target, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pgp, "decrypt", counted)
    outcome = importer.run(env.engine, env.cfg, import_id)
    assert ("completed", len(MARKERS)) == (outcome.summary.status, outcome.summary.rows.created)
    assert ([path] if lost else []) == calls
    assert not copy.exists()
    assert [] == files_holding(env.root, MARKERS)


def test_a_file_that_expands_past_the_cap_inside_pgp_is_rejected(
    env: Env, pgp_keys: Keys, tmp_path: Path
) -> None:
    """SPEC 11: gpg's own compression is capped too; the partial plain text is removed."""
    big = b"external_person_id\n" + b"\n" * (70 << 20)  # compresses inside OpenPGP to ~70 kB
    summary = _import(env, "x.persons.pgp", pgp_keys.encrypt(big))
    message = f"Compressed file expands to more than {layers.MAX_EXPANSION} times its size"
    assert _rejected(message) == _file_error(summary)
    assert [] == sorted(p.name for p in env.cfg.work_dir.rglob("decrypted*"))


# --------------------------------------------------------------------------- command line


@pytest.fixture
def site(tmp_path: Path, sqlite_url: str) -> Site:
    home = tmp_path / "site"
    home.mkdir()
    config = write_config(home, sqlite_url)
    # A short GnuPG home: gpg-agent's socket must fit in 108 bytes.
    gnupg = Path(os.path.realpath(f"/tmp/pdcli-{os.getpid()}-{tmp_path.name[-20:]}"))
    with config.open("a") as fh:
        fh.write(f"[pgp]\nhome = {toml_string(str(gnupg))}\n")
    site = Site(home=home, config=config, db_url=sqlite_url)
    yield site  # type: ignore[misc]
    pgp.kill_agent(gnupg)
    import shutil

    shutil.rmtree(gnupg, ignore_errors=True)


def test_pgp_init_creates_one_key_pair_and_public_key_prints_it(site: Site) -> None:
    """SPEC 7: `pgp init` creates the key pair once; `pgp public-key` prints it armoured."""
    site.cli("pgp", "public-key", expect=1)
    first = site.cli("pgp", "init").stdout
    again = site.cli("pgp", "init").stdout
    assert first.startswith("created: ") and again.startswith("exists: ")
    assert first.split()[1] == again.split()[1]
    armored = site.cli("pgp", "public-key").stdout
    assert armored.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert first.split()[1] == pgp.key_fingerprint(armored)


def test_pgp_init_new_rotates_and_old_files_still_decrypt(site: Site, tmp_path: Path) -> None:
    """Key rotation: `pgp init --new` adds a key pair; public-key prints the new one."""
    old = site.cli("pgp", "init").stdout.split()[1]
    new = site.cli("pgp", "init", "--new").stdout.split()[1]
    assert old != new
    assert new == pgp.key_fingerprint(site.cli("pgp", "public-key").stdout)
    listed = [k.fingerprint for k in pgp.secret_keys(_home_of(site))]
    assert [old, new] == listed


def _home_of(site: Site) -> Path:
    from personsd import config

    return config.load(site.config).pgp_home


def test_tenants_set_pgp_verify_key(site: Site, pgp_keys: Keys, tmp_path: Path) -> None:
    """SPEC 7: `tenants set --pgp-verify-key` stores the key; `--no-pgp-verify-key` drops it."""
    site.add_tenant("acme")
    key_file = tmp_path / "partner.asc"
    key_file.write_bytes(pgp_keys.public(pgp_keys.partner_home, pgp_keys.partner))
    out = site.cli("tenants", "set", "acme", "--pgp-verify-key", str(key_file)).stdout
    assert pgp_keys.partner in out
    engine = db.connect(site.db_url)
    with engine.connect() as conn:
        tenant = store_tenants.get_tenant(conn, "acme")
        assert tenant is not None
        stored = store_tenants.pgp_verify_key(conn, tenant.id)
    assert stored is not None and pgp_keys.partner == stored[1]
    site.cli("tenants", "set", "acme", "--no-pgp-verify-key")
    with engine.connect() as conn:
        assert None is store_tenants.pgp_verify_key(conn, tenant.id)
    engine.dispose()


@pytest.mark.parametrize(
    ("content", "complaint"),
    [(b"not a key", "gpg"), (None, "cannot read")],
    ids=["garbage", "missing"],
)
def test_tenants_set_refuses_what_is_not_one_public_key(
    site: Site, tmp_path: Path, content: bytes | None, complaint: str
) -> None:
    """SPEC 7: a file without exactly one public key is refused (exit 1), nothing stored."""
    site.add_tenant("acme")
    key_file = tmp_path / "partner.asc"
    if content is not None:
        key_file.write_bytes(content)
    result = site.cli("tenants", "set", "acme", "--pgp-verify-key", str(key_file), expect=1)
    assert complaint in result.output


def test_tenants_set_refuses_a_file_of_two_keys(site: Site, pgp_keys: Keys, tmp_path: Path) -> None:
    """SPEC 7: a verify key is one key: a file of two is refused."""
    site.add_tenant("acme")
    key_file = tmp_path / "two.asc"
    key_file.write_bytes(
        pgp_keys.public(pgp_keys.partner_home, pgp_keys.partner)
        + pgp_keys.public(pgp_keys.stranger_home, pgp_keys.stranger)
    )
    result = site.cli("tenants", "set", "acme", "--pgp-verify-key", str(key_file), expect=1)
    assert "exactly one public key, found 2" in result.output


FPR = "A" * 40
VALID = f"[GNUPG:] VALIDSIG {'B' * 40} 2026-12-05 1 0 4 0 22 10 00 {FPR}"


@pytest.mark.parametrize(
    ("lines", "decrypted", "signed"),
    [
        (["[GNUPG:] DECRYPTION_OKAY", f"[GNUPG:] GOODSIG {FPR[-16:]} p", VALID], True, True),
        (["[GNUPG:] DECRYPTION_OKAY", f"[GNUPG:] GOODSIG {FPR[-16:]} p"], True, False),
        (["[GNUPG:] DECRYPTION_OKAY", f"[GNUPG:] EXPKEYSIG {FPR[-16:]} p", VALID], True, False),
        (["[GNUPG:] DECRYPTION_OKAY", "[GNUPG:] ERRSIG X 22 10 00 1 9 " + FPR], True, False),
        (["[GNUPG:] DECRYPTION_OKAY", "[GNUPG:] DECRYPTION_FAILED"], False, False),
        ([f"[GNUPG:] GOODSIG {FPR[-16:]} p", VALID, "gpg: DECRYPTION_OKAY"], False, True),
    ],
    ids=["good", "no-validsig", "expired-key", "errsig", "failed", "sign-only"],
)
def test_status_lines_decide_decryption_and_signature(
    lines: list[str], decrypted: bool, signed: bool
) -> None:
    """SPEC 11: verdicts come from gpg's status lines, a human line never counts."""
    status = pgp.Status.parse("\n".join(lines))
    assert (decrypted, signed) == (status.decrypted, status.signed_by(FPR.lower()))
