"""deploy/haproxy: the shipped HAProxy config, run by the real binary, in front of two daemons.

The test renders ``deploy/haproxy/haproxy.cfg`` with its listen address and
servers replaced by free local ports (everything else as shipped), then
uploads through HAProxy with paramiko; after one instance is killed, uploads
still go through (HAProxy's banner check marks it down, ``retries`` covers
the connections in between).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from cluster_helpers import cluster, wait_all_finished
from daemon_helpers import free_port, ssh_key
from personsd.store import db
from polling import wait_for

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DEPLOYED = Path(__file__).resolve().parents[1] / "deploy" / "haproxy" / "haproxy.cfg"
FILE_TEXT = "external_person_id,mdn,first_name,sport_interests\n{ext},,x,golf\n"

# CI (.ci/run) installs haproxy and sets PERSONSD_TEST_REQUIRE_TOOLS: there a
# missing binary fails the run instead of skipping.
REQUIRE_TOOLS = os.environ.get("PERSONSD_TEST_REQUIRE_TOOLS", "") not in ("", "0")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(HAPROXY).exists() and not REQUIRE_TOOLS, reason="haproxy is not installed"
    ),
]


def render(listen: int, servers: list[int]) -> str:
    """The shipped config with local ports for the frontend and the servers."""
    text = DEPLOYED.read_text()
    text = re.sub(r"(?m)^    bind :22$", f"    bind 127.0.0.1:{listen}", text)
    text = re.sub(r"(?m)^    server .*\n", "", text)
    lines = "".join(
        f"    server node-{n} 127.0.0.1:{port} check\n" for n, port in enumerate(servers)
    )
    text = text.replace("    # PROXY protocol", lines + "    # PROXY protocol", 1)
    # Faster checks than production, so the test sees a dead instance go down.
    return text.replace("inter 2s fall 3 rise 2", "inter 300ms fall 2 rise 1")


def upload(port: int, key: Path, tenant: str, name: str, ext: str) -> None:
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.banner_timeout = 10
        transport.connect(username=tenant, pkey=paramiko.Ed25519Key(filename=str(key)))
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open(f"/inbox/{name}", "w") as fh:
            fh.write(FILE_TEXT.format(ext=ext))
        sftp.close()
    finally:
        transport.close()


def test_the_shipped_config_is_valid() -> None:
    """`haproxy -c` accepts deploy/haproxy/haproxy.cfg as shipped and as the test renders it."""
    checked = subprocess.run([HAPROXY, "-c", "-f", str(DEPLOYED)], capture_output=True, text=True)
    assert 0 == checked.returncode, checked.stderr
    text = DEPLOYED.read_text()
    for needed in ("mode tcp", "balance leastconn", "tcp-check expect string SSH-2.0"):
        assert needed in text


@pytest.mark.timeout(180)
def test_uploads_through_haproxy_are_imported_once_and_survive_a_dead_instance(
    pg_url: str, tmp_path: Path
) -> None:
    """SPEC 12: through HAProxy every upload is imported once, with one instance killed too."""
    key = ssh_key(tmp_path)
    public = (tmp_path / "id_ed25519.pub").read_text().split()
    ports = [free_port(), free_port()]
    daemons = cluster(
        tmp_path,
        pg_url,
        2,
        ("acme",),
        extra={"sftp": {"enabled": True}},
        keys=((public[0], public[1]),),
    )
    for daemon, port in zip(daemons, ports, strict=True):
        daemon.port = port
        daemon.extra["sftp"]["listen"] = f"127.0.0.1:{port}"
    listen = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(render(listen, ports))
    engine = db.connect(pg_url)
    proxy: subprocess.Popen[bytes] | None = None
    try:
        for daemon in daemons:
            daemon.start()  # one after the other: the first makes the shared host key
        proxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)],
            stdout=(tmp_path / "haproxy.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: _listening(listen), what="haproxy listening")
        for index in range(6):
            upload(listen, key, "acme", f"a{index}.persons", f"a{index}")
        wait_all_finished(engine, 6, timeout=60)
        logins = [sum(1 for e in d.events() if e.get("event") == "sftp.login") for d in daemons]
        assert all(count >= 1 for count in logins), logins  # leastconn spread them

        daemons[0].kill()
        deadline = time.monotonic() + 30
        sent = 0
        for index in range(4):
            while True:
                try:
                    upload(listen, key, "acme", f"b{index}.persons", f"b{index}")
                    sent += 1
                    break
                except (paramiko.SSHException, EOFError, OSError):
                    # The one connection HAProxy sent before its check saw the death.
                    assert time.monotonic() < deadline, "uploads kept failing"
                    time.sleep(0.3)
        found = wait_all_finished(engine, 10, timeout=60)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        for daemon in daemons:
            if daemon.proc is not None:
                daemon.stop()
        engine.dispose()
    assert 4 == sent
    records = found["acme"]
    names = sorted(r.file_name for r in records)
    assert [f"a{i}.persons" for i in range(6)] + [f"b{i}.persons" for i in range(4)] == names
    assert {"completed"} == {r.status for r in records}
    assert {1} == {r.rows_created for r in records}


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
