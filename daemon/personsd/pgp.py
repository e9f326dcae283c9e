"""OpenPGP through GnuPG (SPEC 7 and 11): personsd's key pair, decryption, signatures.

Every call runs the ``gpg`` binary on personsd's own home (``pgp.home``,
never ``~/.gnupg``), in batch mode, without options files or key servers.
Verdicts come from gpg's machine-readable status lines (``--status-fd``),
not from its exit code: ``DECRYPTION_OKAY`` says the message was encrypted,
integrity-protected and decrypted; ``VALIDSIG`` names the primary key that
made a good signature. A message that is only signed, or signed by anyone
but the tenant's key, is never accepted as if it were what was asked.

The key pair has no passphrase: like the SSH host key, it is protected by
the home directory's permissions (0700), and the daemon runs unattended.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from personsd.errors import FileRejected, InternalError, OperatorError

GPG = "gpg"
CANNOT_DECRYPT = "File cannot be decrypted"
NOT_SIGNED = "File is not signed by the partner's key"
# Key types `personsd pgp init` offers: (primary key, encryption subkey).
ALGORITHMS: dict[str, tuple[str, str]] = {
    "ed25519": ("ed25519", "cv25519"),
    "rsa4096": ("rsa4096", "rsa4096"),
}
_COPY_BLOCK = 1 << 20
_STATUS = "[GNUPG:] "
_SIGNATURE_TROUBLE = frozenset({"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG"})


def _base(home: Path) -> list[str]:
    return [
        GPG,
        "--homedir",
        str(home),
        "--batch",
        "--no-tty",
        "--no-options",
        "--no-auto-key-retrieve",
        "--no-auto-key-locate",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]


def _run(home: Path, args: Sequence[str], *, data: bytes | None = None) -> str:
    """gpg's stdout as text; OperatorError with its stderr when it fails."""
    try:
        proc = subprocess.run(
            [*_base(home), *args],
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=120,
        )
    except FileNotFoundError:
        raise OperatorError(f"{GPG} is not installed (Debian package gnupg)") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()[-500:]
        raise OperatorError(f"gpg {args[0]} failed: {detail}")
    return proc.stdout.decode(errors="replace")


def ensure_home(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)  # gpg refuses to trust a home others can read


@dataclass(frozen=True, kw_only=True, slots=True)
class Key:
    """A key as ``gpg --with-colons`` lists it."""

    fingerprint: str  # the primary key's
    created: int  # Unix seconds
    uids: tuple[str, ...]
    secret: bool

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", self.fingerprint):
            raise ValueError(f"not a key fingerprint: {self.fingerprint!r}")
        if self.created < 0:
            raise ValueError("created must be >= 0")


def _parse_keys(listing: str, *, secret: bool) -> list[Key]:
    keys: list[Key] = []
    primary = "sec" if secret else "pub"
    current: dict[str, object] | None = None
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == primary:
            if current is not None:
                keys.append(Key(**current))  # type: ignore[arg-type]
            current = {
                "fingerprint": "",
                "created": int(fields[5] or 0),
                "uids": (),
                "secret": secret,
            }
        elif current is None:
            continue
        elif fields[0] == "fpr" and not current["fingerprint"]:
            # The first fingerprint after the primary key line is the primary's.
            current["fingerprint"] = fields[9]
        elif fields[0] == "uid":
            current["uids"] = (*current["uids"], fields[9])  # type: ignore[misc]
    if current is not None:
        keys.append(Key(**current))  # type: ignore[arg-type]
    return keys


def secret_keys(home: Path) -> list[Key]:
    """personsd's key pairs in ``home``, oldest first (ties: in the keyring's order)."""
    if not home.is_dir():
        return []
    listing = _run(home, ["--with-colons", "--fixed-list-mode", "--list-secret-keys"])
    return sorted(_parse_keys(listing, secret=True), key=lambda k: k.created)


def init(home: Path, *, algorithm: str = "ed25519", new: bool = False) -> tuple[Key, bool]:
    """personsd's key pair: the newest one, or a new one when there is none (or ``new``).

    Returns the key and whether it was created now. Old key pairs stay, so
    files encrypted to them while partners switch still decrypt.
    """
    if algorithm not in ALGORITHMS:
        raise OperatorError(f"unknown key type {algorithm!r}: one of {', '.join(ALGORITHMS)}")
    ensure_home(home)
    existing = secret_keys(home)
    if existing and not new:
        return existing[-1], False
    primary, subkey = ALGORITHMS[algorithm]
    uid = f"personsd <personsd@{socket.gethostname()}>"
    # A second key for the same user id must not be refused as a duplicate.
    _run(home, ["--quick-gen-key", "--yes", uid, primary, "sign", "never"])
    known = {key.fingerprint for key in existing}
    # Two keys made within one second tie on their creation time.
    made = next(key for key in secret_keys(home) if key.fingerprint not in known)
    _run(home, ["--quick-add-key", made.fingerprint, subkey, "encr", "never"])
    return made, True


def public_key(home: Path) -> str:
    """The newest key pair's public key, ASCII-armoured; OperatorError when there is none."""
    keys = secret_keys(home)
    if not keys:
        raise OperatorError(f"no PGP key pair in {home}: run `personsd pgp init` first")
    return _run(home, ["--armor", "--export", keys[-1].fingerprint])


def key_fingerprint(armored: bytes | str) -> str:
    """The primary fingerprint of the one public key in ``armored``; OperatorError otherwise."""
    data = armored.encode() if isinstance(armored, str) else armored
    # A scratch home: looking at a key must not add it anywhere.
    with tempfile.TemporaryDirectory(prefix="personsd-gpg-") as scratch:
        listing = _run(
            Path(scratch),
            ["--with-colons", "--import-options", "show-only", "--import"],
            data=data,
        )
    keys = [line.split(":")[9] for line in _primary_fprs(listing)]
    if any(line.startswith("sec:") for line in listing.splitlines()):
        raise OperatorError("the file holds a secret key: give the partner's public key only")
    if len(keys) != 1:
        raise OperatorError(f"the file must hold exactly one public key, found {len(keys)}")
    return keys[0]


def _primary_fprs(listing: str) -> list[str]:
    out, after_primary = [], False
    for line in listing.splitlines():
        kind = line.split(":", 1)[0]
        if kind in ("pub", "sec"):
            after_primary = True
        elif kind == "fpr" and after_primary:
            out.append(line)
            after_primary = False
        elif kind in ("sub", "ssb"):
            after_primary = False
    return out


def import_key(home: Path, armored: str) -> str:
    """Put a partner's public key into ``home`` (idempotent); its fingerprint."""
    fingerprint = key_fingerprint(armored)
    ensure_home(home)
    _run(home, ["--import"], data=armored.encode())
    return fingerprint


# --------------------------------------------------------------------------- decryption


@dataclass(frozen=True, kw_only=True, slots=True)
class Status:
    """What gpg said about one message (its status lines)."""

    lines: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Status:
        found = [
            tuple(line[len(_STATUS) :].split())
            for line in text.splitlines()
            if line.startswith(_STATUS)
        ]
        return cls(lines=tuple(f for f in found if f))

    def has(self, keyword: str) -> bool:
        return any(f[0] == keyword for f in self.lines)

    @property
    def decrypted(self) -> bool:
        return self.has("DECRYPTION_OKAY") and not self.has("DECRYPTION_FAILED")

    def signed_by(self, fingerprint: str) -> bool:
        """A good signature by the key with this primary fingerprint, and no bad one."""
        if any(f[0] in _SIGNATURE_TROUBLE for f in self.lines) or not self.has("GOODSIG"):
            return False
        wanted = fingerprint.upper()
        # VALIDSIG <sig fpr> <date> <ts> <expire> <ver> <res> <algo> <hash> <class> <primary fpr>
        return any(
            f[0] == "VALIDSIG" and (f[10] if len(f) > 10 else f[1]).upper() == wanted
            for f in self.lines
        )

    @property
    def signature_seen(self) -> bool:
        return any(f[0] in _SIGNATURE_TROUBLE or f[0] == "GOODSIG" for f in self.lines)


class Overflow(Exception):
    """The decrypted content grew past the caller's limit."""


def decrypt(
    home: Path,
    source: Path,
    target: Path,
    *,
    signer: str | None = None,
    limit: int | None = None,
) -> None:
    """Decrypt ``source`` into ``target`` (mode 0600), verified; FileRejected when not.

    ``signer``: the fingerprint whose good signature is required. The
    plaintext is written to ``target`` and judged once gpg has read all of
    it; on any failure ``target`` is removed. ``limit`` caps the plaintext
    size (``Overflow``). Raises ``InternalError`` when gpg fails for a reason
    that is not the message's (it decrypted, but gpg still failed).
    """
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    done = False
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile() as errors:
            status = _stream(home, source, out, errors, limit)
            out.flush()
            os.fsync(out.fileno())
        if not status[0].decrypted:
            raise FileRejected.format(CANNOT_DECRYPT)
        if signer is not None and not status[0].signed_by(signer):
            raise FileRejected.format(NOT_SIGNED)
        if status[1] != 0 and not status[0].signature_seen:
            raise InternalError(f"gpg exited with {status[1]} after decrypting: {status[2]}")
        done = True
    finally:
        if not done:
            target.unlink(missing_ok=True)


def _stream(
    home: Path, source: Path, out: IO[bytes], errors: IO[bytes], limit: int | None
) -> tuple[Status, int, str]:
    """Run gpg --decrypt, copying its plaintext to ``out`` with a size cap."""
    cmd = [*_base(home), "--trust-model", "always", "--status-fd", "2", "--decrypt", str(source)]
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
    except FileNotFoundError:
        raise InternalError(f"{GPG} is not installed (Debian package gnupg)") from None
    assert proc.stdout is not None
    written = 0
    try:
        while block := proc.stdout.read(_COPY_BLOCK):
            written += len(block)
            if limit is not None and written > limit:
                raise Overflow(written)
            out.write(block)
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        code = proc.wait()
    errors.seek(0)
    text = errors.read().decode(errors="replace")
    human = " ".join(line for line in text.splitlines() if not line.startswith(_STATUS))
    return Status.parse(text), code, human[-500:]


def kill_agent(home: Path) -> None:
    """Stop the gpg-agent serving ``home`` (tests; key rotation)."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
        check=False,
        capture_output=True,
        timeout=30,
    )


def armor_key(data: bytes) -> str:
    """The one public key in ``data`` (binary or armoured) as ASCII armour."""
    with tempfile.TemporaryDirectory(prefix="personsd-gpg-") as scratch:
        home = Path(scratch)
        _run(home, ["--import"], data=data)
        try:
            return _run(home, ["--armor", "--export"])
        finally:
            kill_agent(home)
