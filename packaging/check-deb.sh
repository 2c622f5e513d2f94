#!/usr/bin/env bash
# Installs target/debian/gt06_*_amd64.deb on this machine and checks what it promises:
# unit files that systemd-analyze accepts, a working binary and config, the gt06 user and
# /var/lib/gt06, a server that starts as that user from the installed config, data kept
# across a reinstall, and everything (user, data, config) gone after a purge.
# Run by .ci/run as root; it leaves the package purged. No systemd needs to run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
shopt -s nullglob
debs=(target/debian/gt06_*_amd64.deb)
[ ${#debs[@]} -eq 1 ] || { echo "expected one target/debian/gt06_*_amd64.deb, found ${#debs[@]}"; exit 1; }
deb="${debs[0]}"
fail() { echo "check-deb: $*" >&2; exit 1; }
pid=""
work="$(mktemp -d)"
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (≤ 15 s) for $1/ports.json, then SIGTERMs $pid and expects exit 0.
serve_and_stop() {
    local data="$1" i
    for i in $(seq 150); do
        [ -s "$data/ports.json" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log"; fail "gt06 serve exited early"; }
        sleep 0.1
    done
    [ -s "$data/ports.json" ] || { cat "$work/serve.log"; fail "no $data/ports.json within 15 s"; }
    local http
    http="$(sed -n 's/.*"http":"\([^"]*\)".*/\1/p' "$data/ports.json")"
    curl -fsS --max-time 5 "http://$http/health/live" >/dev/null \
        || { cat "$work/serve.log"; fail "GET http://$http/health/live failed"; }
    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    pid=""
    [ "$rc" -eq 0 ] || { cat "$work/serve.log"; fail "gt06 serve exited $rc after SIGTERM"; }
}

$SUDO dpkg --purge gt06 >/dev/null 2>&1 || true
echo "-- dpkg -i $deb"
$SUDO dpkg -i "$deb"

echo "-- systemd-analyze verify (installed units, so ExecStart points at /usr/bin/gt06)"
# systemd-analyze exits 0 on unknown keys and bad values and only prints them, so any
# line it prints fails the check, except those about this machine not running systemd.
out="$(systemd-analyze verify /lib/systemd/system/gt06.service /lib/systemd/system/gt06.socket \
    /lib/systemd/system/gt06-http.socket 2>&1)" || { echo "$out"; fail "systemd-analyze verify failed"; }
bad="$(printf '%s\n' "$out" | grep -v -e '^$' \
    -e 'System has not been booted with systemd' -e 'Failed to connect to bus' || true)"
[ -z "$bad" ] || { echo "$bad"; fail "systemd-analyze verify reported problems"; }

echo "-- installed files, user and data directory"
/usr/bin/gt06 --version | grep -q '^gt06 ' || fail "gt06 --version"
/usr/bin/gt06 --help >/dev/null || fail "gt06 --help"
[ -f /etc/gt06/gt06.toml ] || fail "/etc/gt06/gt06.toml missing"
grep -qx /etc/gt06/gt06.toml /var/lib/dpkg/info/gt06.conffiles || fail "gt06.toml is not a conffile"
[ -f /usr/share/doc/gt06/LICENSE ] && [ -f /usr/share/doc/gt06/README.md ] || fail "docs missing"
getent passwd gt06 >/dev/null || fail "no gt06 user"
[ "$(stat -c %U /var/lib/gt06)" = gt06 ] || fail "/var/lib/gt06 not owned by gt06"
for u in gt06.service gt06.socket gt06-http.socket; do
    [ -f "/lib/systemd/system/$u" ] || fail "$u missing"
done

echo "-- gt06 serve with the installed config (as root, into a temp dir)"
/usr/bin/gt06 serve --config /etc/gt06/gt06.toml --data-dir "$work/data" \
    --tcp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/serve.log" 2>&1 &
pid=$!
serve_and_stop "$work/data"

echo "-- gt06 serve as the gt06 user on /var/lib/gt06, as the unit runs it (setpriv execs, so the pid is gt06)"
setpriv --reuid=gt06 --regid=gt06 --init-groups /usr/bin/gt06 serve --config /etc/gt06/gt06.toml --data-dir /var/lib/gt06 \
    --tcp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/serve.log" 2>&1 &
pid=$!
serve_and_stop /var/lib/gt06
[ -d /var/lib/gt06/db ] || fail "no store in /var/lib/gt06"

echo "-- offline backup as README says: copy the stopped data dir, verify the copy"
cp -a /var/lib/gt06 "$work/backup"
/usr/bin/gt06 verify --data-dir "$work/backup" >/dev/null || fail "gt06 verify on the copy"

echo "-- reinstall (an upgrade's maintainer-script path) keeps the data"
$SUDO dpkg -i "$deb" >/dev/null
[ -d /var/lib/gt06/db ] || fail "reinstall lost /var/lib/gt06"
/usr/bin/gt06 verify --data-dir /var/lib/gt06 >/dev/null || fail "gt06 verify after reinstall"

echo "-- dpkg --purge removes user, data and config"
$SUDO dpkg --purge gt06
! getent passwd gt06 >/dev/null || fail "gt06 user still there after purge"
! getent group gt06 >/dev/null || fail "gt06 group still there after purge"
[ ! -e /var/lib/gt06 ] || fail "/var/lib/gt06 still there after purge"
[ ! -e /etc/gt06/gt06.toml ] || fail "/etc/gt06/gt06.toml still there after purge"
[ ! -e /usr/bin/gt06 ] || fail "/usr/bin/gt06 still there after purge"
echo "check-deb: ok"
