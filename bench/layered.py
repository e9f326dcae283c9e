"""The bench file as partners send it compressed and encrypted (SPEC 11).

``files(path, work)`` writes ``path`` gzipped (level 6, gzip's default) and
that gzip encrypted with gpg's defaults to personsd's key, as a partner's
``gpg --encrypt --recipient KEY`` does; personsd's key pair is made by
``personsd pgp init`` in the site's GnuPG home (a short path under /tmp:
gpg-agent's socket lives there).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from pathlib import Path

# The lines run_layered adds: (what, suffix).
LINES = (
    ("personsd initial .gz", ".gz"),
    ("personsd initial .gz.pgp", ".gz.pgp"),
)


def gnupg_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="pdbench-", dir="/tmp"))


def files(path: Path, work: Path, personsd_public_key: bytes) -> dict[str, Path]:
    """``path`` as .gz and .gz.pgp under ``work``."""
    gz = work / (path.name + ".gz")
    with path.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as out:
        shutil.copyfileobj(src, out, 1 << 20)
    partner = gnupg_home()
    try:
        gpg = ["gpg", "--homedir", str(partner), "--batch", "--no-tty", "--yes"]
        subprocess.run(
            [*gpg, "--import"], input=personsd_public_key, check=True, capture_output=True
        )
        encrypted = work / (gz.name + ".pgp")
        recipient = ["--trust-model", "always", "--recipient", _fingerprint(partner)]
        subprocess.run(
            [*gpg, *recipient, "--output", str(encrypted), "--encrypt", str(gz)],
            check=True,
            capture_output=True,
        )
    finally:
        subprocess.run(["gpgconf", "--homedir", str(partner), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(partner, ignore_errors=True)
    return {".gz": gz, ".gz.pgp": encrypted}


def _fingerprint(home: Path) -> str:
    listing = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-keys"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
