#!/usr/bin/env bash
# The fleet's last second (issue 6 (b)), gt06 beside nullsink, alternating, ROUNDS rounds.
#
#   benches/ingest/teardown.sh [SCRATCH] [ROUNDS]
#     SCRATCH  where benches/ingest/run.sh copied and built tools/ (default /tmp/gt06-bench)
#     ROUNDS   rounds of (nullsink, gt06), default 2
#
# Why a separate script: in (b) every tracker sends its barrier heartbeat in the run's last
# second and hangs up as soon as it is answered, so 19,800 heartbeats meet 19,800
# connection teardowns. run.sh's probe leaves before that second on purpose (it measures
# the steady state); here a second gt06load of 100 trackers on 127.0.0.1 joins after the
# ramp and stays 3 s past the fleet's end, so its p99 shows how a tracker that is not
# hanging up is answered through the storm, from a process other than the fleet's meter.
# One run: 19,800 + 100 trackers, 1 fix/s, fleet heartbeat every 5 fixes, probe every fix,
# ~45 s plus the wait for TIME_WAIT sockets to expire. Prints one line per run and leaves
# gt06load's JSON under OUT (default SCRATCH/teardown-DATE). 127.0.0.1 only.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SCRATCH=${1:-/tmp/gt06-bench}
ROUNDS=${2:-2}
OUT=${OUT:-$SCRATCH/teardown-$(date +%Y%m%d-%H%M%S)}
LOAD=$SCRATCH/tools/gt06load/target/release/gt06load
SINK=$SCRATCH/tools/gt06load/target/release/nullsink
GT06=$REPO/target/release/gt06
for b in "$LOAD" "$SINK"; do
  [ -x "$b" ] || { echo "missing $b: run benches/ingest/run.sh once (it builds the tools)" >&2; exit 2; }
done
(cd "$REPO" && cargo build --release -q)
ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"

# Waits (at most 120 s) for the last run's TIME_WAIT sockets, which hold the ports a
# 19,900-tracker run needs.
settle() {
  local i tw
  for i in $(seq 120); do
    tw=$(ss -tan state time-wait | tail -n +2 | wc -l)
    [ "$tw" -lt 500 ] && return 0
    sleep 1
  done
}

# run KIND LABEL: one fleet + probe against a fresh server of KIND (sink | gt06).
run() {
  local kind=$1 d=$OUT/$2 pid tcp i
  mkdir -p "$d"
  settle
  if [ "$kind" = sink ]; then
    "$SINK" 127.0.0.1:0 >"$d/server.log" 2>&1 &
    pid=$!
    for i in $(seq 50); do grep -q listening "$d/server.log" && break; sleep 0.1; done
    tcp=$(grep -o 'listening [^ ]*' "$d/server.log" | awk '{print $2}')
  else
    printf 'data_dir = "%s/data"\n[http]\nlisten = "127.0.0.1:0"\n[tcp]\nlisten = "127.0.0.1:0"\n' "$d" >"$d/gt06.toml"
    "$GT06" serve --config "$d/gt06.toml" >"$d/server.log" 2>&1 &
    pid=$!
    for i in $(seq 100); do [ -f "$d/data/ports.json" ] && break; sleep 0.1; done
    sleep 0.1
    tcp=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['tcp'])" "$d/data/ports.json")
  fi
  # The fleet's addresses are spread over 127.0.0.1-5 (3,960 each) so the probe's 100 on
  # 127.0.0.1 stay under gt06's default per-address cap.
  "$LOAD" "$tcp" --devices 19800 --rate 1 --ramp 10 --duration 30 --heartbeat-every 5 \
    --threads 1 --src-ips 5 --out "$d/fleet.json" >"$d/fleet.txt" 2>&1 &
  local fleet=$!
  sleep 12
  "$LOAD" "$tcp" --devices 100 --rate 1 --ramp 1 --duration 30 --heartbeat-every 1 \
    --imei-base 861000000000000 --threads 1 --out "$d/probe.json" >"$d/probe.txt" 2>&1 || true
  wait "$fleet" || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  python3 - "$kind" "$d" <<'PY'
import json, sys
kind, d = sys.argv[1], sys.argv[2]
def hb(f):
    j = json.load(open(f"{d}/{f}.json"))
    h = j.get("heartbeat_ack_ms") or {}
    return j, h
f, fh = hb("fleet")
p, ph = hb("probe")
print(f"{kind:5} fleet: logins {f['devices']['login_ok']}/{f['devices']['requested']}"
      f" unACKed {f.get('heartbeats_unacked')} HB p50 {fh.get('p50')} p99 {fh.get('p99')} max {fh.get('max')} ms"
      f" | probe: logins {p['devices']['login_ok']}/{p['devices']['requested']} unACKed {p.get('heartbeats_unacked')}"
      f" HB p50 {ph.get('p50')} p99 {ph.get('p99')} max {ph.get('max')} ms")
PY
}

for r in $(seq "$ROUNDS"); do
  run sink "r$r-sink" | tee -a "$OUT/summary.txt"
  run gt06 "r$r-gt06" | tee -a "$OUT/summary.txt"
done
echo "results: $OUT"
