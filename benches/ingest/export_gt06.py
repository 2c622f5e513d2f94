#!/usr/bin/env python3
"""Exports every position a running gt06 stored, over its HTTP API, in the CSV shape
verify_record.py reads: imei,unix_seconds,lat,lon,speed_kmh,course_deg (no header).

    export_gt06.py HTTP_ADDR OUT.csv [THREADS [FROM]]

Lists the devices (GET /api/devices), then fetches each one's whole track as CSV
(GET /api/devices/{imei}/track.csv, one request per device over a few keep-alive
connections); with FROM (unix seconds), only fixes from then on. Prints one JSON line: devices, rows, seconds. Exit 1 on any HTTP error.
"""
import calendar
import http.client
import json
import sys
import threading
import time


def fetch(addr, path):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
    return body


def convert(text, day_base):
    """track.csv lines (imei,time,lat,lon,speed_kmh,course,satellites,valid) -> our CSV."""
    out = []
    lines = text.split("\n")
    for line in lines[1:]:
        if not line:
            continue
        imei, t, lat, lon, speed, course = line.split(",")[:6]
        # t = YYYY-MM-DDTHH:MM:SS.mmmZ; the API always writes this fixed shape
        day = t[:10]
        base = day_base.get(day)
        if base is None:
            base = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
            day_base[day] = base
        secs = base + int(t[11:13]) * 3600 + int(t[14:16]) * 60 + int(t[17:19])
        out.append(f"{imei},{secs}{t[19:23]},{lat},{lon},{speed},{course}\n")
    return out


def main(addr, out_path, threads=4, from_s=0):
    t0 = time.monotonic()
    devices = json.loads(fetch(addr, "/api/devices"))
    imeis = [d["imei"] for d in devices]
    lock = threading.Lock()
    todo = list(reversed(imeis))
    rows = [0]
    errors = []
    out = open(out_path, "w")
    host, port = addr.rsplit(":", 1)

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        day_base = {}
        while True:
            with lock:
                if not todo or errors:
                    break
                imei = todo.pop()
            path = f"/api/devices/{imei}/track.csv"
            if from_s > 0:
                path += "?from=" + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(from_s))
            for attempt in range(3):
                try:
                    conn.request("GET", path)
                    r = conn.getresponse()
                    body = r.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=120)
                    if attempt == 2:
                        raise
            if r.status != 200:
                with lock:
                    errors.append(f"GET {path}: {r.status} {body[:200]!r}")
                break
            lines = convert(body.decode(), day_base)
            with lock:
                out.writelines(lines)
                rows[0] += len(lines)
        conn.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.close()
    print(json.dumps({"devices": len(imeis), "rows": rows[0], "seconds": round(time.monotonic() - t0, 1),
                      "errors": errors[:3]}))
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) >= 4 else 4,
                  int(sys.argv[4]) if len(sys.argv) == 5 else 0))
