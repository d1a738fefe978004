#!/usr/bin/env bash
# `make install` / `make uninstall`: GNU-style installation of the release build.
#
#   scripts/install.sh install|uninstall
#
# Directories come from the environment (the Makefile exports them): DESTDIR (staging root,
# empty by default), BINDIR, SYSCONFDIR, MANDIR, SYSTEMDUNITDIR. The files are those of the
# Debian package and of timed(8)'s FILES section:
#   $BINDIR/timed, $BINDIR/time-cli, $SYSCONFDIR/timed/timed.conf,
#   $SYSTEMDUNITDIR/timed.service, $MANDIR/man8/timed.8, $MANDIR/man1/time-cli.1
# An existing timed.conf is never overwritten, and uninstall keeps one that was edited.
# The unit is packaging/timed.service with its paths pointed at BINDIR and SYSCONFDIR.
set -euo pipefail

cd "$(dirname "$0")/.."

: "${DESTDIR:=}"
: "${BINDIR:?}" "${SYSCONFDIR:?}" "${MANDIR:?}" "${SYSTEMDUNITDIR:?}"
INSTALL=${INSTALL:-install}

bin=$DESTDIR$BINDIR
confdir=$DESTDIR$SYSCONFDIR/timed
conf=$confdir/timed.conf
unitdir=$DESTDIR$SYSTEMDUNITDIR
man8=$DESTDIR$MANDIR/man8
man1=$DESTDIR$MANDIR/man1

# The unit as installed: ExecStartPre=/ExecStart= name the installed binary and config.
unit_text() {
    sed -e "s|/usr/bin/timed|$BINDIR/timed|g" \
        -e "s|/etc/timed/|$SYSCONFDIR/timed/|g" packaging/timed.service
}

case ${1:-} in
install)
    for b in timed time-cli; do
        if [[ ! -x target/release/$b ]]; then
            echo "install.sh: target/release/$b is missing; run 'make' first" >&2
            exit 1
        fi
    done
    $INSTALL -d "$bin" "$confdir" "$unitdir" "$man8" "$man1"
    $INSTALL -m 755 target/release/timed target/release/time-cli "$bin/"
    if [[ -e $conf ]]; then
        echo "install.sh: keeping the existing $conf (the new default is conf/timed.conf)"
    else
        $INSTALL -m 644 conf/timed.conf "$conf"
    fi
    unit_text >"$unitdir/timed.service.tmp"
    chmod 644 "$unitdir/timed.service.tmp"
    mv "$unitdir/timed.service.tmp" "$unitdir/timed.service"
    $INSTALL -m 644 packaging/timed.8 "$man8/timed.8"
    $INSTALL -m 644 packaging/time-cli.1 "$man1/time-cli.1"
    if [[ -z $DESTDIR ]] && ! getent passwd timed >/dev/null 2>&1; then
        echo "install.sh: timed.service runs as the system user 'timed'; create it with" \
            "'adduser --system --group --home /var/lib/timed timed'"
    fi
    ;;
uninstall)
    rm -f "$bin/timed" "$bin/time-cli" "$unitdir/timed.service" \
        "$man8/timed.8" "$man1/time-cli.1"
    if [[ -e $conf ]]; then
        if cmp -s conf/timed.conf "$conf"; then
            rm -f "$conf"
        else
            echo "install.sh: keeping $conf: it differs from the default (remove it by hand)"
        fi
    fi
    rmdir "$confdir" 2>/dev/null || true
    ;;
*)
    echo "usage: $0 install|uninstall" >&2
    exit 2
    ;;
esac
