#!/usr/bin/env bash
# Memory per idle tracker connection: start a release server, log N simulated trackers in
# and leave them idle, and report the server's RSS growth divided by N.
#
#   benches/idle_memory.sh [N]        (default 10000; needs `cargo build --release`)
#
# Loopback only. The simulated trackers report once per 1000 s (after a random phase), so
# during the measurement they are logged in and silent, as trackers between heartbeats.
set -euo pipefail
N=${1:-10000}
BIN=${GT06_BIN:-$(dirname "$0")/../target/release/gt06}
DIR=$(mktemp -d /tmp/gt06-idle-mem.XXXXXX)
trap 'kill $SERVER $SIM 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat > "$DIR/gt06.toml" <<TOML
[tcp]
max_connections_per_ip = 0
[log]
level = "warn"
TOML
"$BIN" serve --config "$DIR/gt06.toml" --data-dir "$DIR/data" \
  --tcp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 > "$DIR/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do [ -s "$DIR/data/ports.json" ] && break; sleep 0.1; done
TCP=$(sed 's/.*"tcp":"\([^"]*\)".*/\1/' "$DIR/data/ports.json")
rss() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER/status"; }
conns() { ls "/proc/$SERVER/fd" | wc -l; }
sleep 1
BEFORE=$(rss)
BASE_FDS=$(conns)
RAMP=$(( N / 2000 + 1 ))
"$BIN" simulate --devices "$N" --rate 0.001 --heartbeat-every 0 --ramp "$RAMP" \
  --duration $(( RAMP + 90 )) --target "$TCP" > "$DIR/sim.log" 2>&1 &
SIM=$!
# Wait for every tracker to be connected (descriptors), then let things settle.
for _ in $(seq 600); do [ "$(conns)" -ge "$N" ] && break; sleep 0.1; done
sleep 5
AFTER=$(rss)
HELD=$(( $(conns) - BASE_FDS ))
# Divided by the connections actually held: short of ephemeral ports (a previous run's
# TIME_WAIT), the simulator connects fewer than asked.
[ "$HELD" -ge "$N" ] || echo "only $HELD of $N connections held (TIME_WAIT from an earlier run?)" >&2
echo "{\"connections\":$N,\"held\":$HELD,\"rss_before_kib\":$BEFORE,\"rss_after_kib\":$AFTER,\"bytes_per_connection\":$(( (AFTER - BEFORE) * 1024 / (HELD > 0 ? HELD : 1) ))}"
