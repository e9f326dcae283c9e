"""Files as partners send them (SPEC 11): gzip, zip, and OpenPGP through the real gpg.

:class:`Keys` holds three GnuPG homes in a short temporary directory (never
``~/.gnupg``): personsd's (made by ``pgp.init``, as ``personsd pgp init``
does), the partner's (which holds personsd's public key) and a stranger's.
Keys are ed25519/cv25519 without passphrase: made in well under a second.
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from personsd import pgp
from personsd.config import Config, PgpConfig

# The variants every layered test runs: the suffix and what the summary lists.
VARIANTS: dict[str, list[str]] = {
    "": [],
    ".gz": ["gzip"],
    ".zip": ["zip"],
    ".pgp": ["pgp"],
    ".gz.pgp": ["pgp", "gzip"],
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Keys:
    """personsd's, a partner's and a stranger's GnuPG homes and key fingerprints."""

    personsd_home: Path
    personsd: str
    partner_home: Path
    partner: str
    stranger_home: Path
    stranger: str

    def public(self, home: Path, fingerprint: str) -> bytes:
        return _gpg(home, "--armor", "--export", fingerprint)

    def encrypt(
        self,
        data: bytes,
        *,
        to: str | None = None,
        sign_as: str | None = None,
        armor: bool = False,
        sign_only: bool = False,
    ) -> bytes:
        """``data`` encrypted by the partner (to personsd unless ``to``), optionally signed.

        ``sign_as`` "partner" or "stranger" signs with that key (in the
        sender's home: the stranger's home encrypts to personsd as well).
        """
        home = self.stranger_home if sign_as == "stranger" else self.partner_home
        args = ["--trust-model", "always"]
        if armor:
            args.append("--armor")
        if sign_only:
            return _gpg(home, *args, "--sign", data=data)
        args += ["--recipient", to or self.personsd, "--encrypt"]
        if sign_as is not None:
            signer = self.stranger if sign_as == "stranger" else self.partner
            args += ["--local-user", signer, "--sign"]
        return _gpg(home, *args, data=data)


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--yes", "--passphrase", "", *args],
        input=data,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return proc.stdout


def _new_key(home: Path, name: str) -> str:
    pgp.ensure_home(home)
    _gpg(home, "--quick-gen-key", f"{name} <{name}@example.com>", "ed25519", "sign", "never")
    listing = _gpg(home, "--with-colons", "--list-secret-keys").decode()
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    _gpg(home, "--quick-add-key", fpr, "cv25519", "encr", "never")
    return fpr


@contextmanager
def make_keys() -> Iterator[Keys]:
    """Fresh homes (a short path: gpg-agent's socket lives there), agents stopped after."""
    root = Path(tempfile.mkdtemp(prefix="pdgpg-", dir="/tmp"))
    homes = [root / "personsd", root / "partner", root / "stranger"]
    try:
        key, _ = pgp.init(homes[0])
        partner = _new_key(homes[1], "partner")
        stranger = _new_key(homes[2], "stranger")
        ours = _gpg(homes[0], "--armor", "--export", key.fingerprint)
        for home in homes[1:]:
            _gpg(home, "--import", data=ours)
        # The partner can encrypt to the stranger too (a file sent to the wrong key).
        _gpg(homes[1], "--import", data=_gpg(homes[2], "--armor", "--export", stranger))
        yield Keys(
            personsd_home=homes[0],
            personsd=key.fingerprint,
            partner_home=homes[1],
            partner=partner,
            stranger_home=homes[2],
            stranger=stranger,
        )
    finally:
        for home in homes:
            pgp.kill_agent(home)
        shutil.rmtree(root, ignore_errors=True)


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zip_bytes(data: bytes, member: str = "export.csv") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return buf.getvalue()


def wrap(data: bytes, suffix: str, keys: Keys | None) -> bytes:
    """``data`` as a file named ``x.persons`` + ``suffix`` holds it."""
    if suffix.endswith((".pgp", ".gpg", ".asc")):
        assert keys is not None
        inner = wrap(data, suffix[: -len(".pgp")], keys)
        return keys.encrypt(inner, armor=suffix.endswith(".asc"))
    if suffix == ".gz":
        return gzip_bytes(data)
    if suffix == ".zip":
        return zip_bytes(data)
    assert "" == suffix, suffix
    return data


def with_pgp_home(cfg: Config, keys: Keys) -> Config:
    return replace(cfg, pgp=PgpConfig(home=keys.personsd_home))


def files_holding(root: Path, needles: list[bytes], *, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every file under ``root`` whose bytes hold one of ``needles`` (the database skipped)."""
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink() or any(path.is_relative_to(s) for s in skip):
            continue
        data = path.read_bytes()
        if any(needle in data for needle in needles):
            found.append(str(path.relative_to(root)))
    return found
