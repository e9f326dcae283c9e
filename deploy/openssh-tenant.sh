#!/bin/sh
# openssh-tenant.sh — give a personsd tenant an SFTP login through OpenSSH
# (the alternative to the embedded server, SPEC 6; see docs/operations.md).
#
#   openssh-tenant.sh TENANT [PUBKEY_FILE...]   create or update the login
#   openssh-tenant.sh --remove TENANT           remove the login, move its files
#                                               to state/removed/
#
# Run as root. Idempotent: running it again repairs ownership and modes and,
# when key files are given, replaces the tenant's authorized keys.
# Afterwards register the tenant with personsd itself (once):
#   personsdctl tenants add TENANT        (deploy/personsdctl)
#
# What sshd's ChrootDirectory and the daemon need, and how it is met:
#   paths.root, tenants/   root:personsd 0750  chroot path components must be
#                                              root-owned, not group/other-writable
#   tenants/T              root:root     0755  the chroot itself, same rule
#   tenants/T/inbox        T:personsd    2770  tenant uploads; setgid so each
#                                              upload is group personsd, which
#                                              lets the daemon read it and move
#                                              it out (no sticky bit!)
#   tenants/T/validate     T:personsd    2770  validate-only drops (SPEC 11),
#                                              the same as the inbox
#   tenants/T/outbox       personsd:T    2750  the tenant lists and reads its
#                                              reports and can create, rename or
#                                              remove nothing there (so it cannot
#                                              delete them either); the daemon
#                                              renames reports in from state/,
#                                              mode 0644, so nothing planted in
#                                              the outbox can redirect them
#   /etc/ssh/authorized_keys/T  root:root 0644 outside the chroot, root-managed
# The login T has its own group T, is in personsd-sftp (the sshd Match), has
# no shell and no usable password ('*', which sshd does not treat as locked).

set -eu

ROOT=${PERSONSD_ROOT:-/var/lib/personsd}
KEYS_DIR=${PERSONSD_AUTHORIZED_KEYS_DIR:-/etc/ssh/authorized_keys}
DAEMON_USER=personsd
SFTP_GROUP=personsd-sftp
NOLOGIN=/usr/sbin/nologin

die() { echo "openssh-tenant.sh: $*" >&2; exit 1; }

usage() {
    echo "usage: openssh-tenant.sh TENANT [PUBKEY_FILE...]" >&2
    echo "       openssh-tenant.sh --remove TENANT" >&2
    exit 2
}

check_name() {
    # A tenant name becomes a Unix user name and the %u of ChrootDirectory.
    case $1 in
        *[!a-z0-9_-]* | [!a-z]* | "") die "tenant name must match [a-z][a-z0-9_-]{0,31}: '$1'" ;;
    esac
    [ "${#1}" -le 32 ] || die "tenant name longer than 32 characters: '$1'"
}

in_group() { id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"; }

set_perms() { # OWNER:GROUP MODE PATH
    chown "$1" "$3"
    chmod "$2" "$3"
}

remove_login() {
    tenant=$1
    if id -u "$tenant" >/dev/null 2>&1; then
        in_group "$tenant" "$SFTP_GROUP" || die "user '$tenant' is not a personsd tenant login; not removing"
        userdel "$tenant"
    fi
    rm -f "$KEYS_DIR/$tenant"
    # tenants/ is root's in this mode, so `personsd tenants remove` (running
    # as personsd) could not move the tree aside itself: do it here, where it
    # would have put it.
    if [ -d "$ROOT/tenants/$tenant" ]; then
        aside="$ROOT/state/removed/$tenant.$(date +%s)"
        install -d -o "$DAEMON_USER" -g "$DAEMON_USER" -m 0750 "$ROOT/state/removed"
        mv "$ROOT/tenants/$tenant" "$aside"
        chown -R "$DAEMON_USER:$DAEMON_USER" "$aside"
        echo "files moved to $aside"
    fi
    echo "login '$tenant' removed; now run: personsdctl tenants remove $tenant"
}

[ "$(id -u)" = 0 ] || die "must run as root"
[ $# -ge 1 ] || usage
if [ "$1" = --remove ]; then
    [ $# -eq 2 ] || usage
    check_name "$2"
    remove_login "$2"
    exit 0
fi
case $1 in -*) usage ;; esac
tenant=$1
shift
check_name "$tenant"
for key in "$@"; do
    [ -r "$key" ] || die "cannot read key file: $key"
    ssh-keygen -l -f "$key" >/dev/null 2>&1 || die "not an OpenSSH public key file: $key"
done

id -u "$DAEMON_USER" >/dev/null 2>&1 || die "user '$DAEMON_USER' missing: install deploy/personsd.sysusers first"
getent group "$SFTP_GROUP" >/dev/null || groupadd --system "$SFTP_GROUP"

if id -u "$tenant" >/dev/null 2>&1; then
    # Never take over an account that is not ours.
    in_group "$tenant" "$SFTP_GROUP" || die "user '$tenant' exists and is not in group $SFTP_GROUP"
else
    useradd --system --user-group --groups "$SFTP_GROUP" --no-create-home \
        --home-dir "$ROOT/tenants/$tenant" --shell "$NOLOGIN" \
        --comment "personsd tenant $tenant (SFTP only)" "$tenant"
fi
# '!' would lock the account for sshd when UsePAM is off; '*' only means
# "no password".
usermod --password '*' "$tenant"

tenant_group=$(id -gn "$tenant")
install -d "$ROOT/tenants/$tenant/inbox" "$ROOT/tenants/$tenant/validate" \
    "$ROOT/tenants/$tenant/outbox"
set_perms root:"$DAEMON_USER" 0750 "$ROOT"
set_perms root:"$DAEMON_USER" 0750 "$ROOT/tenants"
set_perms root:root 0755 "$ROOT/tenants/$tenant"
set_perms "$tenant:$DAEMON_USER" 2770 "$ROOT/tenants/$tenant/inbox"
set_perms "$tenant:$DAEMON_USER" 2770 "$ROOT/tenants/$tenant/validate"
set_perms "$DAEMON_USER:$tenant_group" 2750 "$ROOT/tenants/$tenant/outbox"
# Files left from the embedded server (all owned by personsd) join the scheme.
find "$ROOT/tenants/$tenant/inbox" "$ROOT/tenants/$tenant/validate" -mindepth 1 -maxdepth 1 -type f \
    -exec chown "$tenant:$DAEMON_USER" {} + -exec chmod 0640 {} +
find "$ROOT/tenants/$tenant/outbox" -mindepth 1 -maxdepth 1 -type f \
    -exec chgrp "$tenant_group" {} + -exec chmod 0640 {} +

install -d -o root -g root -m 0755 "$KEYS_DIR"
if [ $# -gt 0 ]; then
    tmp=$(mktemp "$KEYS_DIR/.$tenant.XXXXXX")
    cat "$@" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$KEYS_DIR/$tenant"
elif [ ! -e "$KEYS_DIR/$tenant" ]; then
    install -o root -g root -m 0644 /dev/null "$KEYS_DIR/$tenant"
    echo "warning: no keys given; $KEYS_DIR/$tenant is empty, so '$tenant' cannot log in yet" >&2
fi

echo "login '$tenant' ready: chroot $ROOT/tenants/$tenant, keys $KEYS_DIR/$tenant"
