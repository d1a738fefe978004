#!/usr/bin/env bash
# `make deb-check`: builds the Debian package with `make deb` and checks it.
#
#   1. contents: SPEC §7 layout, the conffile, stripped binaries, computed dependencies
#   2. lintian: no errors and no warnings (overrides are in packaging/lintian-overrides)
#   3. the man pages render without a groff warning
#   4. systemd-analyze security --offline=yes --threshold=15 on the unit (exposure <= 1.5)
#   5. as root, on this machine (a policy-rc.d keeps the service from starting):
#      dpkg -i, the timed user and /var/lib/timed, `timed --version` and
#      `timed --check-config` as installed, systemd-analyze verify on the installed unit,
#      an edited /etc/timed/timed.conf surviving an upgrade to a higher version, and
#      dpkg --purge removing the config, the state, the user and the enablement
#   6. make install DESTDIR=…: exactly the files timed(8) lists; no clobbered config;
#      make uninstall
#   Between 5's install and upgrade, where the machine is not itself booted with systemd
#   (CI's is not), the installed unit runs under a real systemd: one booted in private
#   mount, PID, network and cgroup namespaces on a throw-away overlay of this root, with
#   every hardening option in force. It checks Type=notify readiness, the user, the status
#   endpoint, reload (SIGHUP), a clean stop, and that a configuration error stops the start.
#
# Installs what it needs when missing (lintian, systemd, man-db, dpkg-dev) with apt-get
# when root; without root it skips then, and skips the install test (both are failures
# under CI=true). Leaves the machine as it found it: the package purged, a policy-rc.d it
# added removed, its temporary directories and any systemd it booted gone.
set -euo pipefail

cd "$(dirname "$0")/.."

step() { echo "== deb-check: $*"; }
fail() {
    echo "deb-check: FAILED: $*" >&2
    exit 1
}

is_root=false
[[ $EUID -eq 0 ]] && is_root=true
if ! $is_root && [[ ${CI:-} == true ]]; then
    fail "CI runs this as root; the install test needs it"
fi

# ---- tools ------------------------------------------------------------------------------
missing=()
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v man >/dev/null 2>&1 || missing+=(man-db)
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
if ((${#missing[@]})); then
    if $is_root && command -v apt-get >/dev/null 2>&1; then
        step "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    elif [[ ${CI:-} == true ]]; then
        fail "missing ${missing[*]} (need root and apt-get to install them)"
    else
        echo "deb-check: skipped: missing ${missing[*]} (need root and apt-get to install them)" >&2
        exit 0
    fi
fi

# ---- build ------------------------------------------------------------------------------
step "make deb"
start=$SECONDS
${MAKE:-make} --no-print-directory deb
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
deb=target/debian/timed_${version}-1_${arch}.deb
[[ -f $deb ]] || fail "make deb did not produce $deb"
echo "built $deb in $((SECONDS - start))s ($(stat -c %s "$deb") bytes)"

tmp=$(mktemp -d /tmp/timed-deb-check.XXXXXX)

# The systemd booted by systemd_test (below), if any, and its cgroup.
boot_pid=""
boot_cgroup=""
stop_boot() {
    if [[ -n $boot_pid ]]; then
        # boot_pid is unshare; its child is the namespace's PID 1, whose end ends them all.
        pkill -KILL -P "$boot_pid" 2>/dev/null || true
        kill -KILL "$boot_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$boot_pid" 2>/dev/null || break; sleep 0.1; done
        boot_pid=""
    fi
    if [[ -n $boot_cgroup && -d $boot_cgroup ]]; then
        for _ in $(seq 50); do
            find "$boot_cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d $boot_cgroup ]] || break
            sleep 0.1
        done
        boot_cgroup=""
    fi
}

policy_added=false
installed_by_us=false
cleanup() {
    local rc=$?
    stop_boot
    if $installed_by_us && dpkg-query -W -f='${Status}' timed 2>/dev/null | grep -qv "not-installed"; then
        dpkg --purge timed >/dev/null 2>&1 || echo "deb-check: cleanup: dpkg --purge timed failed" >&2
    fi
    if $policy_added; then
        rm -f /usr/sbin/policy-rc.d
    fi
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT

# The files timed(8) lists: the paths that head the .TP/.TQ entries of its FILES section,
# without the state directory.
man_files() {
    awk '/^\.SH / { files = ($2 == "FILES") } \
         files && (prev == ".TP" || prev == ".TQ") && $1 == ".I" && $2 ~ /^\// { print $2 } \
         { prev = $1 }' packaging/timed.8 |
        sed 's/\\-/-/g' | grep -vx /var/lib/timed | sort
}
man_files >"$tmp/man-files"
[[ -s $tmp/man-files ]] || fail "no FILES entries found in packaging/timed.8"

# ---- 1. contents --------------------------------------------------------------------
step "contents"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' | grep -v '/$' | sort >"$tmp/deb-files"
cat "$tmp/deb-files"
grep -v -e '^/usr/share/doc/' -e '^/usr/share/lintian/' "$tmp/deb-files" >"$tmp/deb-listed"
diff -u "$tmp/man-files" "$tmp/deb-listed" ||
    fail "the package's files differ from those timed(8) lists"
for f in /usr/share/doc/timed/copyright /usr/share/doc/timed/changelog.Debian.gz; do
    grep -qx "$f" "$tmp/deb-files" || fail "$f is missing from the package"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$tmp/conffiles"
grep -qx /etc/timed/timed.conf "$tmp/conffiles" || fail "/etc/timed/timed.conf is not a conffile"
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
for dep in libc6 libssl3 adduser; do
    [[ $depends == *"$dep"* ]] || fail "Depends lacks $dep"
done
mkdir "$tmp/root"
dpkg-deb -x "$deb" "$tmp/root"
for b in timed time-cli; do
    if readelf -S "$tmp/root/usr/bin/$b" | grep -qE '\.(symtab|debug_)'; then
        fail "/usr/bin/$b is not stripped"
    fi
done
echo "binaries stripped; /etc/timed/timed.conf is a conffile"

# ---- 2. lintian -------------------------------------------------------------------------
step "lintian"
lintian --version
# Info tags are shown for the record; an error or a warning fails.
lintian_rc=0
lintian --info --display-level '>=info' --fail-on error,warning "$deb" >"$tmp/lintian" 2>&1 ||
    lintian_rc=$?
grep -v -e 'running with root privileges' -e '^N:' "$tmp/lintian" || true
((lintian_rc == 0)) || fail "lintian reports errors or warnings (exit status $lintian_rc)"
echo "lintian: no errors, no warnings"

# ---- 3. man pages -----------------------------------------------------------------------
step "man pages"
for page in packaging/timed.8 packaging/time-cli.1; do
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null)
    [[ -z $warnings ]] || fail "$page: $warnings"
    LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$page" 2>/dev/null | grep -q '^NAME' || fail "$page does not render"
done
echo "timed.8 and time-cli.1 render without warnings"

# ---- 4. systemd-analyze security --------------------------------------------------------
step "systemd-analyze security"
systemd-analyze --version | head -n1
systemd-analyze security --offline=yes --threshold=15 packaging/timed.service >"$tmp/security" 2>&1 || {
    cat "$tmp/security"
    fail "systemd-analyze security: exposure above 1.5"
}
grep '✗' "$tmp/security" || true
grep 'Overall exposure' "$tmp/security"

# ---- the unit under a real systemd ------------------------------------------------------
# Boots /lib/systemd/systemd as PID 1 of new mount, PID, network and cgroup namespaces, on an
# overlay of / whose writes go to a tmpfs, with units that would touch the shared kernel
# (sysctl, modules, binfmt, udev, clock) masked, into a target that only wants timed.service.
# Everything ends with that PID 1: killing it ends its namespaces and the overlay.
systemd_test() {
    if [[ -d /run/systemd/system ]]; then
        echo "skipped: this machine runs systemd itself (its services are not deb-check's to start)"
        return 0
    fi
    local unified=""
    if [[ $(stat -f -c %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]]; then
        unified=/sys/fs/cgroup
    elif [[ $(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then
        unified=/sys/fs/cgroup/unified
    fi
    if [[ -z $unified ]] || ! command -v unshare >/dev/null || ! grep -qw overlay /proc/filesystems; then
        echo "skipped: needs a cgroup2 hierarchy, unshare and overlayfs"
        return 0
    fi
    boot_cgroup=$unified/timed-deb-check.$$
    mkdir "$boot_cgroup"
    cat >"$tmp/boot.sh" <<'BOOT'
set -e
R=$1
mount -t tmpfs tmpfs "$R"
mkdir -p "$R/upper" "$R/work" "$R/new"
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/upper,workdir=$R/work" "$R/new"
N=$R/new
mount -t proc proc "$N/proc"
mount --bind -o ro /proc/sys "$N/proc/sys"
mount -o remount,bind,ro "$N/proc/sys"
mount -t sysfs -o ro sysfs "$N/sys"
mount -t cgroup2 cgroup2 "$N/sys/fs/cgroup"
mount --bind /dev "$N/dev"
mount -t tmpfs tmpfs "$N/run"
mount -t tmpfs tmpfs "$N/tmp"
E=$N/etc/systemd/system
for u in systemd-sysctl systemd-modules-load systemd-binfmt systemd-udevd systemd-udev-trigger \
    systemd-udev-settle systemd-hwdb-update systemd-timesyncd systemd-pstore systemd-remount-fs \
    systemd-firstboot systemd-random-seed systemd-machine-id-commit systemd-update-utmp \
    systemd-logind dbus getty@tty1 serial-getty@ttyS0 console-getty; do
    ln -sf /dev/null "$E/$u.service"
done
for u in proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount dev-hugepages.mount \
    dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
    sys-fs-fuse-connections.mount; do
    ln -sf /dev/null "$E/$u"
done
printf '[Unit]\nDescription=deb-check: just enough for timed\nRequires=basic.target timed.service\nAfter=basic.target timed.service\n' \
    >"$E/deb-check.target"
mkdir -p "$N/.oldroot"
cd "$N"
pivot_root . .oldroot
umount -l /.oldroot
exec env -i container=deb-check PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=deb-check.target --log-target=journal
BOOT
    mkdir "$tmp/sysroot"
    bash -c 'echo $$ >"$1/cgroup.procs" && exec unshare --mount --pid --fork --kill-child --net \
        --cgroup --propagation private bash "$2" "$3"' _ "$boot_cgroup" "$tmp/boot.sh" "$tmp/sysroot" \
        >"$tmp/boot.log" 2>&1 &
    boot_pid=$!
    disown "$boot_pid"  # its SIGKILL at the end is no news
    # First the manager must answer at all: if it never does, this machine cannot boot it
    # (skip); once it does, whatever becomes of timed.service is the unit's doing.
    local init="" state=""
    for _ in $(seq 300); do
        init=$(pgrep -P "$boot_pid" -x systemd || true)
        if [[ -n $init ]]; then
            state=$(nsenter -t "$init" -a -r -w systemctl is-system-running 2>/dev/null || true)
            [[ -n $state && $state != offline ]] && break
        fi
        kill -0 "$boot_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $state || $state == offline ]]; then
        cat "$tmp/boot.log"
        echo "skipped: systemd did not boot here"
        stop_boot
        return 0
    fi
    local in=(nsenter -t "$init" -a -r -w)
    sctl() { "${in[@]}" systemctl --no-pager "$@"; }
    echo "systemd $("${in[@]}" systemctl --version | sed -n '1s/^systemd //p') booted"
    # Type=notify: active only once timed has sent READY=1.
    local active=""
    for _ in $(seq 300); do
        active=$(sctl is-active timed 2>/dev/null || true)
        [[ $active == active || $active == failed ]] && break
        sleep 0.1
    done
    if [[ $active != active ]]; then
        sctl status timed || true
        "${in[@]}" journalctl --no-pager -u timed || true
        stop_boot
        fail "timed.service is not active under systemd"
    fi
    sctl status timed | head -n 12
    local main
    main=$(sctl show -p MainPID --value timed)
    [[ $("${in[@]}" stat -c %U "/proc/$main") == timed ]] || fail "timed.service does not run as timed"
    "${in[@]}" grep -q '^CapEff:.*0000000000000000$' "/proc/$main/status" || fail "timed.service has capabilities"
    [[ $("${in[@]}" curl -s http://127.0.0.1:8332/health) == ok ]] || fail "the status endpoint does not answer"
    "${in[@]}" time-cli status >/dev/null || fail "time-cli status failed against the service"
    sctl reload timed
    for _ in $(seq 50); do
        "${in[@]}" journalctl --no-pager -u timed | grep -q 'Reloaded configuration' && break
        sleep 0.1
    done
    "${in[@]}" journalctl --no-pager -u timed | grep -q 'Reloaded configuration' ||
        fail "systemctl reload timed did not reload the configuration"
    sctl stop timed
    [[ $(sctl show -p Result --value timed) == success ]] || fail "timed.service did not stop cleanly"
    [[ $(sctl show -p ExecMainStatus --value timed) == 0 ]] || fail "timed did not exit 0 on stop"
    "${in[@]}" sh -c 'echo "bogus=1" >>/etc/timed/timed.conf'
    ! sctl start timed 2>/dev/null || fail "timed.service started with a bad configuration"
    "${in[@]}" journalctl --no-pager -u timed | grep 'configuration error' | tail -n1
    "${in[@]}" journalctl --no-pager -u timed | grep -q 'bogus: unknown key' ||
        fail "the configuration error is not in the journal"
    stop_boot
    echo "timed.service under systemd: ready (Type=notify) as user timed without capabilities;" \
        "status endpoint, reload, clean stop, and a bad configuration refused"
}

# ---- 5. install, upgrade, purge ---------------------------------------------------------
if ! $is_root; then
    step "install test skipped: needs root"
elif dpkg-query -W -f='${Status}' timed 2>/dev/null | grep -qv "not-installed"; then
    # A developer's own installation is not deb-check's to purge.
    [[ ${CI:-} != true ]] || fail "timed is already installed on this CI machine"
    step "install test skipped: timed is already installed here (dpkg --purge timed to run it)"
else
    step "install test"
    user_existed=false
    getent passwd timed >/dev/null && user_existed=true
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# deb-check: no service starts during the install test\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=true
    fi

    # dpkg -i installs no dependency: bring in any that this machine lacks.
    needed=()
    for dep in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/[|(].*//'); do
        dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q "ok installed" || needed+=("$dep")
    done
    if ((${#needed[@]})); then
        echo "installing the package's dependencies: ${needed[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
    fi

    installed_by_us=true
    dpkg -i "$deb"
    [[ $(dpkg-query -W -f='${Status} ${Version}' timed) == "install ok installed ${version}-1" ]] ||
        fail "timed ${version}-1 is not installed after dpkg -i"
    entry=$(getent passwd timed) || fail "no timed user after install"
    echo "user: $entry"
    [[ $(cut -d: -f6 <<<"$entry") == /var/lib/timed ]] || fail "the timed user's home is not /var/lib/timed"
    [[ $(stat -c %U:%G /var/lib/timed) == timed:timed ]] || fail "/var/lib/timed is not owned by timed"
    [[ $(timed --version) == "timed $version" ]] || fail "timed --version says '$(timed --version)'"
    time-cli --version >/dev/null || fail "time-cli --version failed"
    runuser -u timed -- timed --check-config >"$tmp/effective" || fail "timed --check-config (as timed) failed"
    grep -q 'read from /etc/timed/timed.conf' "$tmp/effective" ||
        fail "timed --check-config did not read /etc/timed/timed.conf"
    echo "timed --version: $(timed --version); timed --check-config: ok as user timed"
    systemd-analyze verify /lib/systemd/system/timed.service || fail "systemd-analyze verify"
    echo "systemd-analyze verify: ok"
    [[ -L /etc/systemd/system/multi-user.target.wants/timed.service ]] || fail "timed.service is not enabled"
    man -l /usr/share/man/man8/timed.8.gz >/dev/null && man -l /usr/share/man/man1/time-cli.1.gz >/dev/null ||
        fail "the installed man pages do not render"

    step "timed.service under systemd"
    systemd_test

    step "upgrade keeps an edited /etc/timed/timed.conf"
    echo "maxpeers=200   # deb-check: an operator's edit" >>/etc/timed/timed.conf
    # cargo deb deletes every timed_*.deb in target/debian, even with --output elsewhere:
    # keep the one make deb built.
    cp "$deb" "$tmp/built.deb"
    cargo deb --locked --no-build --deb-version "${version}-2" --output "$tmp/" >/dev/null
    cp "$tmp/built.deb" "$deb"
    dpkg -i "$tmp/timed_${version}-2_${arch}.deb" </dev/null
    [[ $(dpkg-query -W -f='${Version}' timed) == "${version}-2" ]] || fail "the upgrade to ${version}-2 did not happen"
    grep -q '^maxpeers=200' /etc/timed/timed.conf || fail "the edit of /etc/timed/timed.conf was lost"
    timed --check-config | grep -qx 'maxpeers=200' || fail "the edited configuration is not in effect"
    echo "upgraded to ${version}-2; the edit survived and is in effect"

    step "purge"
    dpkg --purge timed
    installed_by_us=false
    ! dpkg-query -W -f='${Status}' timed 2>/dev/null | grep -q installed || fail "timed still installed"
    for path in /etc/timed /var/lib/timed /lib/systemd/system/timed.service \
        /etc/systemd/system/multi-user.target.wants/timed.service /usr/bin/timed; do
        [[ ! -e $path && ! -L $path ]] || fail "$path is still there after purge"
    done
    if ! $user_existed; then
        ! getent passwd timed >/dev/null || fail "the timed user is still there after purge"
        ! getent group timed >/dev/null || fail "the timed group is still there after purge"
    fi
    echo "purged: config, state, unit, enablement, user and group removed"
fi

# ---- 6. make install --------------------------------------------------------------------
step "make install DESTDIR=…"
# With the package's directories, make install lays out exactly what timed(8) lists.
dest=$tmp/dest
${MAKE:-make} --no-print-directory install DESTDIR="$dest" PREFIX=/usr SYSCONFDIR=/etc \
    SYSTEMDUNITDIR=/lib/systemd/system >/dev/null
(cd "$dest" && find . -type f | sed 's|^\.||' | sort) >"$tmp/installed"
sed 's/\.gz$//' "$tmp/man-files" | diff -u - "$tmp/installed" ||
    fail "make install does not lay out the files timed(8) lists"
grep -q '^ExecStart=/usr/bin/timed --conf /etc/timed/timed.conf$' "$dest/lib/systemd/system/timed.service" ||
    fail "the installed unit does not start /usr/bin/timed --conf /etc/timed/timed.conf"
# Defaults: PREFIX=/usr/local, and the unit points at what was installed there.
dest=$tmp/dest-local
${MAKE:-make} --no-print-directory install DESTDIR="$dest" >/dev/null
(cd "$dest" && find . -type f | sed 's|^\.||' | sort) >"$tmp/installed-local"
cat "$tmp/installed-local"
sed -e 's|^/usr/|/usr/local/|' -e 's|^/etc/|/usr/local/etc/|' -e 's|^/lib/|/usr/local/lib/|' \
    -e 's/\.gz$//' "$tmp/man-files" | sort | diff -u - "$tmp/installed-local" ||
    fail "make install (PREFIX=/usr/local) does not lay out the files timed(8) lists"
grep -q '^ExecStart=/usr/local/bin/timed --conf /usr/local/etc/timed/timed.conf$' \
    "$dest/usr/local/lib/systemd/system/timed.service" || fail "the PREFIX=/usr/local unit has the wrong paths"
# An existing configuration is never overwritten, and uninstall keeps an edited one.
echo "maxpeers=7" >>"$dest/usr/local/etc/timed/timed.conf"
${MAKE:-make} --no-print-directory install DESTDIR="$dest" >/dev/null
grep -q '^maxpeers=7$' "$dest/usr/local/etc/timed/timed.conf" || fail "make install overwrote timed.conf"
${MAKE:-make} --no-print-directory uninstall DESTDIR="$dest" >/dev/null
(cd "$dest" && find . -type f | sed 's|^\.||') >"$tmp/left"
[[ $(cat "$tmp/left") == /usr/local/etc/timed/timed.conf ]] ||
    fail "make uninstall left $(tr '\n' ' ' <"$tmp/left") (expected only the edited timed.conf)"
echo "make install: the files timed(8) lists; an existing timed.conf kept; make uninstall: done"

step "all checks passed"
