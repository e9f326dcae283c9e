"""The embedded SFTP server (SPEC sections 6 and 9): one module per part.

:mod:`.server` (listener, connection threads), :mod:`.auth` (logins, channel
policy), :mod:`.guard` (connections per address, password guesses, bans),
:mod:`.bans` and :mod:`.shared` (failed logins in memory or in the database),
:mod:`.filesystem` (the tenant's tree), :mod:`.paths` (its names),
:mod:`.handles` (uploads, downloads), :mod:`.session` (what a session knows),
:mod:`.replies` (status codes, attributes), :mod:`.subsystem` (paramiko's
SFTP subsystem with our caps), :mod:`.limits`, :mod:`.budget` and
:mod:`.quota` (caps and shared counters), :mod:`.hostkey`, and :mod:`.wire`:
every reach into paramiko's internals, fenced in one module.
"""

from personsd.sftp.auth import TenantAuth
from personsd.sftp.hostkey import load_or_create_host_key
from personsd.sftp.limits import SftpLimits
from personsd.sftp.server import SftpServer

__all__ = ["SftpLimits", "SftpServer", "TenantAuth", "load_or_create_host_key"]
