"""The daemon (``personsd run``): SFTP server, watcher, intake, workers, signals.

Signal handlers only set flags; the main thread acts on them:
- SIGTERM/SIGINT: stop intake (SFTP server, watcher), let each worker finish
  its current chunk and checkpoint, exit 0 within ``STOP_TIMEOUT``. A chunk
  still running at the deadline is abandoned: its transaction never commits
  and it is redone after restart. A second signal exits at once.
- SIGHUP: reload the configuration and tenants, rescan the inboxes.

systemd: ``READY=1`` once listening, ``STATUS=`` with what it is doing,
``WATCHDOG=1`` from the main loop while the workers are alive.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from types import FrameType

from sqlalchemy import make_url

from personsd import config as config_mod
from personsd import instance, metrics, notifier, sdnotify, tenancy
from personsd.config import Config
from personsd.errors import ConfigError
from personsd.intake import Intake
from personsd.logging import Event, configure, get_logger
from personsd.republish import Republisher
from personsd.retry import RetryPolicy
from personsd.sftp import SftpLimits, SftpServer, load_or_create_host_key
from personsd.sftp.shared import SharedLoginBans
from personsd.store import db
from personsd.tenantcache import TenantCache
from personsd.watcher import InboxWatcher
from personsd.workers import Workers, sweep_archive

log = get_logger("personsd.service")

STOP_TIMEOUT = 8.0  # SPEC 5: exit within 10 s of SIGTERM


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        self._signals = 0
        self._reload = threading.Event()
        self._wakeup = threading.Event()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.instance = instance.instance_name(cfg)
        self.lock: instance.DaemonLock | None = None
        if make_url(cfg.database.url).get_backend_name() == "sqlite":
            # Before anything listens or writes: a second daemon stops here.
            self.lock = instance.hold_lock(cfg, self.instance)
        tenancy.init_paths(cfg)
        self.engine = db.connect(
            cfg.database.url, idle_in_transaction_seconds=cfg.cluster.lease_seconds
        )
        self.tenants = TenantCache(snapshot=cfg.state_dir / "tenants.json", engine=self.engine)
        self.workers = Workers(
            engine=self.engine, cfg=cfg, stop=self.stop, on_activity=sdnotify.status
        )
        self.intake = Intake(engine=self.engine, cfg=cfg, on_queued=self.workers.wake)
        self.watcher = InboxWatcher(
            tenants_root=cfg.tenants_dir,
            settle_seconds=cfg.imports.settle_seconds,
            rescan_seconds=cfg.imports.rescan_seconds,
            on_ready=self.intake.offer,
        )
        self.sftp: SftpServer | None = None
        self.republisher = Republisher(engine=self.engine, cfg=lambda: self.cfg)
        self.sender = notifier.Sender(engine=self.engine, cfg=cfg, stop=self.stop)
        self.metrics: metrics.MetricsServer | None = None

    # -- signals: flags only ----------------------------------------------
    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(1)  # the operator insists
        self.stop.set()
        self._wakeup.set()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()
        self._wakeup.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    # -- life cycle ---------------------------------------------------------
    def _prepare_database(self) -> None:
        """Migrate, load tenants, resume what a previous run left; wait while it is down."""
        policy = RetryPolicy(base=0.5, cap=30.0)
        attempt = 0
        while not self.stop.is_set():
            try:
                db.upgrade(self.engine)
                self._refresh_tenants()
                self.intake.recover()
                self._publish_unpublished()
                return
            except Exception as exc:  # noqa: BLE001 -- database down at start: keep trying
                attempt += 1
                delay = policy.delay(attempt)
                log.warning(Event.DB_UNAVAILABLE, error=repr(exc)[:300], retry_in=round(delay, 2))
                sdnotify.status(f"waiting for the database: {type(exc).__name__}")
                self.stop.wait(delay)

    def _refresh_tenants(self) -> None:
        """Tenants as the database has them now, each with its directories made first."""
        self.tenants.refresh(prepare=lambda name: tenancy.tenant_dirs(self.cfg, name))

    def _publish_unpublished(self) -> None:
        """A crash between finishing an import and publishing its reports.

        Each import on its own: one that fails is retried from the main loop
        on its own schedule, and the workers start regardless.
        """
        self.republisher.find()
        self.republisher.publish_due()

    def _start_sftp(self) -> None:
        if not self.cfg.sftp.enabled:
            return
        limits = SftpLimits.from_config(self.cfg.limits)
        # SQLite has one instance (a second refuses to start): every upload temp
        # left is its own, cut short. Several instances may share a tree otherwise.
        sqlite = make_url(self.cfg.database.url).get_backend_name() == "sqlite"
        self.sftp = SftpServer(
            host=self.cfg.sftp.host,
            port=self.cfg.sftp.port,
            host_key=load_or_create_host_key(self.cfg.sftp.host_key),
            tenants_root=self.cfg.tenants_dir,
            lookup=self.tenants.get,
            on_upload=self.watcher.notify_complete,
            limits=limits,
            bans=SharedLoginBans.from_url(self.cfg.database.url, limits),
            stale_upload_seconds=0.0 if sqlite else limits.stale_upload_seconds,
        )
        self.sftp.start()

    def run(self) -> int:
        """``personsd run``: signals, start, serve until stopped, shut down."""
        self.install_signals()
        self.start()
        self.serve()
        return self.shutdown()

    def start(self) -> None:
        """Start every part; returns once the workers run (or a stop came first).

        Apart from :meth:`serve` and :meth:`shutdown` so that reload and
        shutdown can be driven in-process (tests/test_service.py).
        """
        # Intake first: the SFTP server and watcher work without the database.
        self._start_sftp()
        self.metrics = metrics.start(self.cfg, self.engine, lambda: self.sftp)
        self.watcher.start()
        self.intake.start()
        log.info(
            Event.DAEMON_STARTED,
            pid=os.getpid(),
            instance=self.instance,
            sftp=self.cfg.sftp.listen if self.cfg.sftp.enabled else None,
            database=make_url(self.cfg.database.url).render_as_string(hide_password=True),
            root=str(self.cfg.root),
            workers=self.cfg.imports.workers,
        )
        sdnotify.ready("accepting uploads")
        self._prepare_database()
        if not self.stop.is_set():
            self.workers.start()
            self.sender.start()
            sdnotify.status("idle")

    def serve(self) -> None:
        """The main loop: reloads, watchdog pings, housekeeping; until ``stop`` is set."""
        interval = sdnotify.watchdog_interval()
        tick = min(1.0, interval / 3) if interval else 1.0
        housekeeping = time.monotonic()
        while not self.stop.is_set():
            self._wakeup.wait(tick)
            self._wakeup.clear()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            sdnotify.watchdog_ping()
            if self.republisher.pending():
                self.republisher.publish_due()
            if time.monotonic() - housekeeping >= self.cfg.imports.rescan_seconds:
                housekeeping = time.monotonic()
                self._housekeeping()

    def _housekeeping(self) -> None:
        try:
            self._refresh_tenants()
            self.intake.recover()
        except Exception as exc:  # noqa: BLE001 -- database down: the next round retries
            log.warning(Event.DB_UNAVAILABLE, error=repr(exc)[:300])
        removed = sweep_archive(self.cfg)
        if removed:
            log.info(Event.ARCHIVE_SWEPT, removed=removed, keep_days=self.cfg.archive.keep_days)

    def reload(self) -> None:
        """SIGHUP: configuration, log settings, tenants; a rescan of every inbox."""
        sdnotify.reloading()
        try:
            if self.cfg.source is not None:
                fresh = config_mod.load(self.cfg.source)
                if (fresh.root, fresh.database, fresh.sftp) != (
                    self.cfg.root,
                    self.cfg.database,
                    self.cfg.sftp,
                ):
                    log.warning(
                        Event.CONFIG_RESTART_NEEDED,
                        reason="paths, database and sftp changes apply at restart",
                    )
                    fresh = replace(
                        fresh, root=self.cfg.root, database=self.cfg.database, sftp=self.cfg.sftp
                    )
                configure(fresh.log.format, fresh.log.level)
                self.cfg = fresh
                self.workers.cfg = fresh
                self.sender.cfg = fresh
                self.intake.cfg = fresh
            self._refresh_tenants()
            log.info(Event.CONFIG_RELOADED, source=str(self.cfg.source))
        except (ConfigError, Exception) as exc:  # noqa: BLE001 -- keep running on the old one
            log.error(Event.CONFIG_RELOAD_FAILED, error=str(exc))
        self.watcher.rescan()
        sdnotify.ready("reloaded")

    def shutdown(self) -> int:
        """Stop intake, drain the workers within STOP_TIMEOUT, close; the exit code."""
        deadline = time.monotonic() + STOP_TIMEOUT
        log.info(Event.DAEMON_STOPPING, busy=self.workers.busy())
        sdnotify.stopping()
        if self.sftp is not None:
            self.sftp.stop()
        self.watcher.stop()
        self.intake.stop(timeout=1.0)
        if not self.workers.join(deadline):
            # Its transaction never commits: that chunk is redone after restart.
            log.warning(Event.DAEMON_ABANDONED_CHUNK, timeout=STOP_TIMEOUT)
        self.sender.join(deadline)
        if self.metrics is not None:
            self.metrics.stop()
        self.engine.dispose()
        log.info(Event.DAEMON_STOPPED)
        if self.lock is not None:
            self.lock.release()
        return 0


def main(cfg: Config) -> int:
    """``personsd run``: returns the exit code."""
    return Daemon(cfg).run()
