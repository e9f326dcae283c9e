"""deploy/: the systemd unit, sysusers/tmpfiles snippets, production config and OpenSSH mode.

Every check runs the real tool (systemd-analyze, systemd-sysusers,
systemd-tmpfiles, sshd, sftp). A check is skipped only when its tool is not
installed or cannot run here at all, and the skip reason says which.
Nothing touches the host: sysusers/tmpfiles work on a --root in a tmp dir,
and sshd runs in a private mount namespace (unshare) over copies of /etc.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from personsd import config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNIT = DEPLOY / "personsd.service"
IS_ROOT = os.geteuid() == 0


def tool(name: str) -> str:
    """The path of an installed tool, or skip: the check cannot run without it."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.skip(f"{name} is not installed, so this check cannot run here")
    return path


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def unit_settings() -> dict[str, list[str]]:
    """Every assignment of the unit file, in order, keyed by `Section.Key`."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary swapped for one that exists here.

    `systemd-analyze verify` rejects a unit whose ExecStart binary is missing,
    and /opt/personsd/bin/personsd exists only on an installed host.
    """
    text = UNIT.read_text()
    rewritten, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={tool('true')}", text)
    assert 1 == count
    copy = tmp_path / "personsd.service"
    copy.write_text(rewritten)
    return copy


# ---- systemd unit ---------------------------------------------------------


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    """The unit passes `systemd-analyze verify` without a single warning."""
    result = run(tool("systemd-analyze"), "verify", str(verifiable_unit(tmp_path)))
    assert (0, "", "") == (result.returncode, result.stdout, result.stderr)


def test_unit_exposure_at_most_2() -> None:
    """`systemd-analyze security --offline` rates the unit's exposure at 2.0 or less."""
    # --threshold is on the 0-100 scale behind the 0.0-10.0 figure printed.
    result = run(
        tool("systemd-analyze"),
        "security",
        "--offline=true",
        "--threshold=20",
        "--no-pager",
        str(UNIT),
    )
    match = re.search(r"Overall exposure level for personsd\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert (0, True) == (result.returncode, exposure <= 2.0), f"exposure {exposure}"


def test_unit_contract() -> None:
    """The unit starts `personsd run` as a notify service with watchdog, reload and stop rules."""
    s = unit_settings()
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.WatchdogSec": ["30"],
        "Service.ExecStart": [
            "/opt/personsd/bin/personsd --config /etc/personsd/personsd.toml run"
        ],
        "Service.Environment": ["PERSONSD_CONFIG=/etc/personsd/personsd.toml"],
        "Service.EnvironmentFile": ["-/etc/personsd/env"],
        "Service.ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Service.KillSignal": ["SIGTERM"],
        "Service.TimeoutStopSec": ["15"],
        "Service.Restart": ["on-failure"],
        "Service.User": ["personsd"],
        "Service.DynamicUser": ["no"],
        "Service.ReadWritePaths": ["/var/lib/personsd"],
        "Service.CapabilityBoundingSet": [""],
        "Service.IPAddressDeny": ["any"],
        "Service.IPAddressAllow": ["localhost"],
        "Install.WantedBy": ["multi-user.target"],
    }
    assert expected == {key: s.get(key) for key in expected}


# ---- production config ----------------------------------------------------


def test_production_config_is_accepted_and_fits_the_unit() -> None:
    """deploy/personsd.toml parses, and everything it writes lies in state/ under ReadWritePaths."""
    cfg = config.load(DEPLOY / "personsd.toml", env={})
    db_file = Path(cfg.database.url.removeprefix("sqlite:///"))
    assert (
        Path(unit_settings()["Service.ReadWritePaths"][0]),
        cfg.state_dir,
        cfg.state_dir,
        True,
        "json",
    ) == (cfg.root, db_file.parent, cfg.sftp.host_key.parent, cfg.sftp.enabled, cfg.log.format)


def test_production_config_database_from_environment() -> None:
    """PERSONSD_DATABASE_URL from /etc/personsd/env replaces the SQLite URL."""
    url = "postgresql+psycopg://personsd:secret@db.example.net:5432/personsd"
    cfg = config.load(DEPLOY / "personsd.toml", env={"PERSONSD_DATABASE_URL": url})
    assert url == cfg.database.url


# ---- sysusers.d / tmpfiles.d ----------------------------------------------


def sysusers_root(tmp_path: Path) -> Path:
    """A fake root holding the accounts deploy/personsd.sysusers creates."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = run(tool("systemd-sysusers"), f"--root={root}", str(DEPLOY / "personsd.sysusers"))
    assert 0 == result.returncode, result.stderr
    return root


def test_sysusers_creates_daemon_user_and_sftp_group(tmp_path: Path) -> None:
    """sysusers creates user personsd (home /var/lib/personsd, no shell) and group personsd-sftp."""
    root = sysusers_root(tmp_path)
    users = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    groups = {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()}
    assert (["/var/lib/personsd", "/usr/sbin/nologin"], {"personsd", "personsd-sftp"}) == (
        users["personsd"][5:7],
        groups,
    )


@pytest.mark.parametrize(
    ("snippet", "tenants_owner"),
    [("personsd.tmpfiles", "personsd"), ("personsd-openssh.tmpfiles", "root")],
)
def test_tmpfiles_layout(tmp_path: Path, snippet: str, tenants_owner: str) -> None:
    """tmpfiles builds paths.root root-owned 0750 with personsd's state/ and the mode's tenants/."""
    if not IS_ROOT:
        pytest.skip("systemd-tmpfiles must chown to personsd, which only root can do")
    root = sysusers_root(tmp_path)
    result = run(tool("systemd-tmpfiles"), "--create", f"--root={root}", str(DEPLOY / snippet))
    assert (0, "") == (result.returncode, result.stderr)
    ids = {
        line.split(":")[2]: line.split(":")[0]
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    gids = {
        line.split(":")[2]: line.split(":")[0]
        for line in (root / "etc/group").read_text().splitlines()
    }
    ids["0"] = gids["0"] = "root"

    def describe(rel: str) -> str:
        st = (root / rel).stat()
        return f"{ids[str(st.st_uid)]}:{gids[str(st.st_gid)]} {st.st_mode & 0o7777:o}"

    assert {
        "var/lib/personsd": "root:personsd 750",
        "var/lib/personsd/state": "personsd:personsd 750",
        "var/lib/personsd/tenants": f"{tenants_owner}:personsd 750",
    } == {
        rel: describe(rel)
        for rel in ("var/lib/personsd", "var/lib/personsd/state", "var/lib/personsd/tenants")
    }


# ---- OpenSSH alternative --------------------------------------------------

# sshd refuses to start (even for -t/-T) without its privilege separation
# directory /run/sshd; in a private mount namespace a tmpfs /run provides it
# without touching the host.
PRIVATE_RUN = """
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0755 /run/sshd
"""


def in_namespace(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a bash script in a private mount namespace (root only)."""
    if not IS_ROOT:
        pytest.skip("sshd needs /run/sshd, which only root can provide (private mount namespace)")
    return run(
        tool("unshare"),
        "--mount",
        "--propagation",
        "private",
        tool("bash"),
        "-euc",
        script,
        "bash",
        *args,
        timeout=timeout,
    )


def sshd_config(tmp_path: Path, snippet: Path, *, port: int = 22) -> Path:
    """A Debian-shaped sshd_config: the snippet included first, Subsystem sftp after."""
    host_key = tmp_path / "host_key"
    if not host_key.exists():
        result = run(tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        assert 0 == result.returncode, result.stderr
    path = tmp_path / "sshd_config"
    path.write_text(
        f"Include {snippet}\n"
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n"
        "UsePAM no\nX11Forwarding yes\nAllowTcpForwarding yes\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    return path


def effective(tmp_path: Path, snippet: Path) -> dict[str, str]:
    """`sshd -T` for user root: the settings a login of root would get."""
    sshd = tool("sshd")
    cfg = sshd_config(tmp_path, snippet)
    result = in_namespace(
        PRIVATE_RUN + '"$1" -T -f "$2" -C user=root,host=client,addr=127.0.0.1', sshd, str(cfg)
    )
    assert 0 == result.returncode, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def test_sshd_snippet_passes_sshd_t(tmp_path: Path) -> None:
    """`sshd -t` accepts a full config that includes deploy/sshd_config.d/personsd.conf."""
    sshd = tool("sshd")
    cfg = sshd_config(tmp_path, DEPLOY / "sshd_config.d/personsd.conf")
    result = in_namespace(PRIVATE_RUN + '"$1" -t -f "$2"', sshd, str(cfg))
    assert (0, "") == (result.returncode, result.stderr)


def test_sshd_snippet_leaves_other_users_alone(tmp_path: Path) -> None:
    """The Match block ends with the snippet: users outside personsd-sftp keep the main settings."""
    got = effective(tmp_path, DEPLOY / "sshd_config.d/personsd.conf")
    keys = ("forcecommand", "chrootdirectory", "x11forwarding", "allowtcpforwarding", "subsystem")
    assert {
        "forcecommand": "none",
        "chrootdirectory": "none",
        "x11forwarding": "yes",
        "allowtcpforwarding": "yes",
        "subsystem": "sftp /usr/lib/openssh/sftp-server",
    } == {k: got.get(k) for k in keys}


def test_sshd_snippet_locks_tenants_in(tmp_path: Path) -> None:
    """A tenant login gets chroot, forced internal-sftp in /inbox, keys outside, no forwarding."""
    # root stands in for a tenant: the same block, matched on a group root is in.
    text = (DEPLOY / "sshd_config.d/personsd.conf").read_text()
    snippet = tmp_path / "tenant.conf"
    snippet.write_text(text.replace("Match Group personsd-sftp", "Match Group root"))
    got = effective(tmp_path, snippet)
    expected = {
        "chrootdirectory": "/var/lib/personsd/tenants/%u",
        "forcecommand": "internal-sftp -d /inbox -u 0027 -P symlink,hardlink",
        "authorizedkeysfile": "/etc/ssh/authorized_keys/%u",
        "passwordauthentication": "no",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "x11forwarding": "no",
        "permittunnel": "no",
        "permittty": "no",
    }
    assert expected == {k: got.get(k) for k in expected}


E2E = (
    PRIVATE_RUN
    + r"""
deploy=$1; work=$2; port=$3; sshd=$4
# Private copies of /etc and /var/lib: accounts and the tenant tree live and
# die with this namespace.
cp -a /etc "$work/etc"
mount --bind "$work/etc" /etc
mount -t tmpfs -o mode=0755 tmpfs /var/lib
systemd-sysusers "$deploy/personsd.sysusers" >/dev/null 2>&1
cp "$deploy/personsd-openssh.tmpfiles" "$work/personsd.conf"
systemd-tmpfiles --create "$work/personsd.conf"
ssh-keygen -q -t ed25519 -N '' -C acme -f "$work/client_key"
sh "$deploy/openssh-tenant.sh" acme "$work/client_key.pub" >/dev/null
"$sshd" -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
trap 'kill $! 2>/dev/null || true' EXIT
for _ in $(seq 100); do (: >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

as_daemon() { setpriv --reuid=personsd --regid=personsd --init-groups sh -c "umask 0027; $1"; }
t=/var/lib/personsd/tenants/acme
printf 'person_id\n1\n' >"$work/upload.persons"
# As the daemon publishes (reports.publish): written in state/, 0644, renamed in.
as_daemon "mkdir -p /var/lib/personsd/state/work/1 && echo '{}' >/var/lib/personsd/state/work/1/.r \
    && chmod 0644 /var/lib/personsd/state/work/1/.r \
    && mv /var/lib/personsd/state/work/1/.r $t/outbox/old.persons.1.summary.json"
cat >"$work/batch" <<EOF
pwd
put $work/upload.persons new.persons.filepart
rename new.persons.filepart new.persons
put $work/upload.persons /validate/check.persons
-symlink new.persons link.persons
-cd /..
ls -1 /
get /outbox/old.persons.1.summary.json $work/summary.json
-rm /outbox/old.persons.1.summary.json
-put $work/upload.persons /outbox/planted.persons
-mkdir /outbox/planted
-rename /outbox/old.persons.1.summary.json /outbox/moved.json
EOF
sftp -b "$work/batch" -i "$work/client_key" -P "$port" -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null acme@127.0.0.1 \
    >"$work/sftp.out" 2>&1 || { cat "$work/sftp.out" "$work/sshd.log" >&2; exit 1; }
grep -E '^(Remote working directory|/inbox|/outbox|/validate|remote |dest open)' "$work/sftp.out"
ls -1 $t/inbox $t/outbox $t/validate | sed 's/^/LS /'
stat -c 'STAT %n %U:%G %a' $t $t/inbox $t/outbox $t/validate $t/inbox/new.persons \
    $t/validate/check.persons $t/outbox/old.persons.1.summary.json
as_daemon "cat $t/inbox/new.persons >/dev/null && mkdir -p /var/lib/personsd/state/work/1 \
    && mv $t/inbox/new.persons /var/lib/personsd/state/work/1/source && echo CLAIMED"
as_daemon "mv $t/validate/check.persons /var/lib/personsd/state/work/1/check && echo CLAIMED"
cat "$work/summary.json"
sh "$deploy/openssh-tenant.sh" --remove acme >/dev/null
id acme >/dev/null 2>&1 && echo LOGIN-KEPT || echo LOGIN-GONE
ls /var/lib/personsd/tenants /var/lib/personsd/state/removed | sed 's/\.[0-9]*$//;s/^/LS /'
stat -c 'STAT %U:%G' /var/lib/personsd/state/removed/acme.*/inbox
"""
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_openssh_tenant_end_to_end(tmp_path: Path) -> None:
    """OpenSSH mode: a tenant uploads in its chroot, the daemon reads it; --remove undoes it.

    The tenant reads its reports but can create, rename or remove nothing in its
    outbox (SPEC 6: nothing it plants there can redirect a report).
    """
    for name in ("sftp", "ssh-keygen", "setpriv", "systemd-sysusers", "systemd-tmpfiles"):
        tool(name)
    sshd = tool("sshd")
    port = free_port()
    sshd_config(tmp_path, DEPLOY / "sshd_config.d/personsd.conf", port=port)
    result = in_namespace(E2E, str(DEPLOY), str(tmp_path), str(port), sshd)
    assert 0 == result.returncode, result.stdout + result.stderr
    t = "/var/lib/personsd/tenants/acme"
    assert [
        "Remote working directory: /inbox",
        'remote symlink file "new.persons" to "/inbox/link.persons": Permission denied',
        "/inbox",
        "/outbox",
        "/validate",
        # the outbox is read-only for the tenant
        "remote delete /outbox/old.persons.1.summary.json: Permission denied",
        'dest open "/outbox/planted.persons": Permission denied',
        'remote mkdir "/outbox/planted": Permission denied',
        'remote rename "/outbox/old.persons.1.summary.json" to "/outbox/moved.json": '
        "Permission denied",
        # the inbox listing, then the outbox with its report still there
        "LS " + f"{t}/inbox:",
        "LS new.persons",
        "LS ",
        "LS " + f"{t}/outbox:",
        "LS old.persons.1.summary.json",
        "LS ",
        "LS " + f"{t}/validate:",
        "LS check.persons",
        f"STAT {t} root:root 755",
        f"STAT {t}/inbox acme:personsd 2770",
        f"STAT {t}/outbox personsd:acme 2750",
        f"STAT {t}/validate acme:personsd 2770",
        f"STAT {t}/inbox/new.persons acme:personsd 640",
        f"STAT {t}/validate/check.persons acme:personsd 640",
        f"STAT {t}/outbox/old.persons.1.summary.json personsd:personsd 644",
        "CLAIMED",
        "CLAIMED",
        "{}",
        # --remove: login gone, tree moved aside for personsd to own
        "LOGIN-GONE",
        "LS /var/lib/personsd/state/removed:",
        "LS acme",
        "LS ",
        "LS /var/lib/personsd/tenants:",
        "STAT personsd:personsd",
    ] == result.stdout.splitlines()


BAD_NAMES = (
    PRIVATE_RUN
    + r"""
script=$1; work=$2; shift 2
# A regression here must not create accounts on the host: private /etc, /var/lib.
cp -a /etc "$work/etc"
mount --bind "$work/etc" /etc
mount -t tmpfs -o mode=0755 tmpfs /var/lib
for name in "$@"; do
    sh "$script" "$name" 2>&1 && echo "ACCEPTED $name" || echo "REFUSED $name: rc=$?"
done
"""
)


def test_openssh_tenant_refuses_bad_names(tmp_path: Path) -> None:
    """Tenant names that are no safe Unix user name are refused before anything is touched."""
    names = ["Acme", "../x", "1acme", "a" * 33, "-x", ""]
    result = in_namespace(BAD_NAMES, str(DEPLOY / "openssh-tenant.sh"), str(tmp_path), *names)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("ACC", "REF"))]
    assert [f"REFUSED {n}: rc={2 if n == '-x' else 1}" for n in names] == lines, result.stdout


def test_personsdctl_runs_as_the_service_user_with_its_environment(tmp_path: Path) -> None:
    """personsdctl runs personsd as the service user with the config and env file the unit uses."""
    if not IS_ROOT:
        pytest.skip("personsdctl switches user with runuser, which only root can do")
    tool("runuser")
    with tempfile.TemporaryDirectory() as tmp:
        # Outside pytest's 0700 tree: the target user must reach the stand-in binary.
        Path(tmp).chmod(0o755)
        result = run_personsdctl(Path(tmp))
    assert (
        0,
        [
            "nobody",
            "/etc/personsd/personsd.toml",
            "postgresql+psycopg://u:p$w@db/x?sslmode=require&a=b",
            "two words",
            "tenants",
            "add",
            "a b",
        ],
    ) == (result.returncode, result.stdout.splitlines()), result.stderr


def run_personsdctl(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """personsdctl with a stand-in personsd that prints its user, environment and arguments."""
    env_file = tmp_path / "env"
    env_file.write_text(
        "# database\n"
        "PERSONSD_DATABASE_URL='postgresql+psycopg://u:p$w@db/x?sslmode=require&a=b'\n"
        "\n"
        'OTHER="two words"\n'
    )
    stand_in = tmp_path / "personsd"
    stand_in.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$(id -un)" "$PERSONSD_CONFIG" '
        '"$PERSONSD_DATABASE_URL" "$OTHER" "$@"\n'
    )
    stand_in.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "PERSONSD_ENV_FILE": str(env_file),
        "PERSONSD_BIN": str(stand_in),
        "PERSONSD_USER": "nobody",
    }
    return subprocess.run(
        [tool("sh"), str(DEPLOY / "personsdctl"), "tenants", "add", "a b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
