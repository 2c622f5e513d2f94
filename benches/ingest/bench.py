#!/usr/bin/env python3
"""Ingest at fleet scale (issue 6): gt06 beside the Node + PostgreSQL peer and nullsink.

Run through run.sh, which builds everything first. This file only measures:

    bench.py --scratch DIR --gt06 BIN [--repeats 3] [--scenarios a,b,d,e] [--soak once|each|off]

Scenarios (each round runs the chosen ones; inside a scenario the servers run one after
another, so the ratios of a round come from the same minutes of the machine):
  a  peak durable ingest: 50 pipelined devices flat out (gt06load --max)
  b  19,900 trackers at one fix per second
  d  reconnect storm: 19,900 trackers within 5 s to a restarted server holding b's store
  e  bad input under load: 5,000 trackers at 1 Hz, then again beside misbehaving clients
  c  soak: 1,000 trackers at 1 Hz for --soak-minutes, as consecutive one-minute loads
In the scenarios named by --pin (default b) every server runs on CPU 0 and every gt06load
on CPU 1: the meter on the other core. Unpinned, the last second of (b) (19,800 trackers
send their final heartbeat and hang up) needs about a core of the meter's one thread and a
core of the server's, and whichever server it is, its threads and the meter's compete for
the two: the meter, starved, reads answers late and counts its own queue as latency.
With --b-warmup, the (b) fleet runs once against nullsink before round 1, unmeasured: the
first such load after the tools are built was slower for every server, nullsink too.
Every measurement samples the server's RSS every 0.5 s, takes CPU seconds of the server,
PostgreSQL, gt06load and what else ran on the machine, and for the storing servers checks
with verify_record.py that everything gt06load sent was stored. Results go to
OUT/results.json (after every measurement) and OUT/report.md.
"""
import argparse
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_of(pid):
    try:
        st = open(f"/proc/{pid}/stat").read()
    except OSError:
        return 0.0
    f = st[st.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / CLK  # utime, stime (fields 14, 15)


def pg_cpu():
    out = subprocess.run(["ps", "-C", "postgres", "-o", "pid="], capture_output=True, text=True).stdout
    return sum(cpu_of(int(p)) for p in out.split())


def busy_cpu():
    for line in open("/proc/stat"):
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK
    return 0.0


def dirty_mib():
    """Page cache the kernel still has to write back (Dirty + Writeback), MiB."""
    kib = 0
    for line in open("/proc/meminfo"):
        if line.startswith(("Dirty:", "Writeback:")):
            kib += int(line.split()[1])
    return kib / 1024


def loadavg():
    return float(open("/proc/loadavg").read().split()[0])


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    """RSS of one process every 0.5 s, as (monotonic time, KiB)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop_ev = pid, [], threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            r = rss_kib(self.pid)
            if r is None:
                break
            self.samples.append((time.monotonic(), r))
            self.stop_ev.wait(0.5)

    def window(self, t0, t1):
        return [r for t, r in self.samples if t0 <= t <= t1]

    def before(self, t0):
        b = [r for t, r in self.samples if t < t0]
        return b[-1] if b else None


def mib(kib):
    return None if kib is None else round(kib / 1024, 1)


class Bench:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        os.makedirs(self.out, exist_ok=True)
        tools = os.path.join(a.scratch, "tools")
        self.load_bin = os.path.join(tools, "gt06load/target/release/gt06load")
        self.sink_bin = os.path.join(tools, "gt06load/target/release/nullsink")
        self.verify = os.path.join(tools, "verify_record.py")
        self.peer_dir = os.path.join(a.scratch, "peers/node-gt06")
        pg = sorted(d for d in os.listdir("/usr/lib/postgresql"))[-1]
        self.psql = [f"/usr/lib/postgresql/{pg}/bin/psql", "-h", "127.0.0.1", "-p", str(a.pgport),
                     "-U", "postgres", "-d", "gt06", "-qAt", "-v", "ON_ERROR_STOP=1"]
        self.results = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv,
                        "machine": machine_notes(), "rounds": []}
        self.next_ts = int(time.time())
        self.scenario = None
        self.b_warmed = False
        self.gt06_tcp_extra = tcp_extra_keys(a.config_example, a.tcp_extra)

    # ---- bookkeeping
    def save(self):
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)

    def start_ts(self, span_s):
        """A fix-time start after everything sent before, so no (IMEI, time) repeats."""
        ts = max(int(time.time()), self.next_ts)
        self.next_ts = ts + int(math.ceil(span_s)) + 5
        return ts

    def sql(self, *cmds):
        args = list(self.psql)
        for c in cmds:
            args += ["-c", c]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()

    # ---- where processes run
    def cpus(self, role):
        """The CPUs a `role` ("server" or "load") process gets in the current scenario, or
        None (anywhere)."""
        if self.scenario not in self.a.pin or (os.cpu_count() or 1) < 2:
            return None
        return {0} if role == "server" else {1}

    def popen(self, role, cmd, **kw):
        cpus = self.cpus(role)
        if cpus:
            kw["preexec_fn"] = lambda: os.sched_setaffinity(0, cpus)
        return subprocess.Popen(cmd, **kw)

    def pin_postgres(self, cpus):
        """PostgreSQL is part of the peer's server: its processes (and the backends the
        postmaster forks later) go where the peer goes; None gives them every CPU back."""
        cpus = cpus or set(range(os.cpu_count() or 1))
        out = subprocess.run(["ps", "-C", "postgres", "-o", "pid="], capture_output=True, text=True).stdout
        for pid in out.split():
            try:
                os.sched_setaffinity(int(pid), cpus)
            except OSError:
                pass

    # ---- servers
    def start(self, kind, d, data_dir=None):
        """kind: sink | peer-db | peer-nodb | gt06. Returns a dict describing the process."""
        os.makedirs(d, exist_ok=True)
        logf = open(os.path.join(d, f"{kind}.log"), "w")
        t0 = time.monotonic()
        srv = {"kind": kind, "dir": d, "log": logf.name}
        if kind == "sink":
            p = self.popen("server", [self.sink_bin, "127.0.0.1:0"], stdout=logf, stderr=subprocess.STDOUT)
            srv["tcp"] = wait_for_line(logf.name, r"listening (\S+)", 10)
        elif kind.startswith("peer"):
            port = free_port()
            env = dict(os.environ, NO_DB="1" if kind == "peer-nodb" else "0", STATS_MS="250",
                       PGPORT=str(self.a.pgport))
            if kind == "peer-db":
                self.pin_postgres(self.cpus("server"))
            p = self.popen("server", [os.path.join(self.peer_dir, "run.sh"), str(port)], stdout=logf,
                           stderr=subprocess.STDOUT, env=env)
            wait_for_line(logf.name, r"(listening)", 15)
            srv["tcp"] = f"127.0.0.1:{port}"
        else:
            data_dir = data_dir or os.path.join(d, "data")
            ports = os.path.join(data_dir, "ports.json")
            if os.path.exists(ports):
                os.remove(ports)
            cfg = os.path.join(d, "gt06.toml")
            with open(cfg, "w") as f:
                f.write(f'data_dir = "{data_dir}"\n\n[http]\nlisten = "127.0.0.1:0"\n\n'
                        f'[tcp]\nlisten = "127.0.0.1:0"\n{self.gt06_tcp_extra}')
                if self.a.store_extra:
                    f.write("\n[store]\n" + "\n".join(x.strip() for x in self.a.store_extra.split(";")) + "\n")
            p = self.popen("server", [self.a.gt06, "serve", "--config", cfg], stdout=logf, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while not os.path.exists(ports):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gt06 did not start; see {logf.name}")
                time.sleep(0.02)
            time.sleep(0.05)
            pj = json.load(open(ports))
            srv.update(tcp=pj["tcp"], http=pj["http"], data_dir=data_dir)
        srv["startup_s"] = round(time.monotonic() - t0, 2)
        srv["cpus"] = sorted(self.cpus("server") or [])
        srv["proc"] = p
        srv["pid"] = p.pid
        srv["sampler"] = Sampler(p.pid)
        srv["sampler"].start()
        return srv

    def stop(self, srv):
        p = srv["proc"]
        t0 = time.monotonic()
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=180)
            except subprocess.TimeoutExpired:
                log(f"{srv['kind']} did not stop in 180 s; killing pid {p.pid}")
                p.kill()
                p.wait()
        srv["sampler"].stop_ev.set()
        if srv["kind"] == "peer-db":
            self.pin_postgres(None)
        return {"exit_code": p.returncode, "stop_s": round(time.monotonic() - t0, 2)}

    # ---- one load run against one server
    def run_load(self, srv, name, load_args, record=True):
        d = srv["dir"]
        out_json = os.path.join(d, f"{name}.load.json")
        rec = os.path.join(d, f"{name}.record.jsonl") if record else None
        # Several loopback source addresses: with ~20,000 connections (plus the previous
        # run's TIME_WAITs) on one address, the kernel's ephemeral-port search inside
        # connect() stalls gt06load's one thread for seconds (measured: 10 s of system
        # CPU and a 2.5 s login ACK max against nullsink with 1 address, 0.09 s with 4).
        cmd = [self.load_bin, srv["tcp"], *load_args, "--threads", "1", "--src-ips", str(self.a.src_ips),
               "--out", out_json]
        if rec:
            cmd += ["--record", rec]
        with open(os.path.join(d, f"{name}.load.txt"), "w") as lf:
            p = self.popen("load", cmd, stdout=lf, stderr=subprocess.STDOUT)
            _, status, ru = os.wait4(p.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        load = json.load(open(out_json)) if os.path.exists(out_json) else {}
        progress = [ln.strip() for ln in open(os.path.join(d, f"{name}.load.txt")) if ln.startswith("[")]
        return load, rc, round(ru.ru_utime + ru.ru_stime, 1), rec, progress, " ".join(cmd[1:])

    def measure(self, srv, name, load_args, record=True, peer_drain=True, side=None, quiet=True):
        """One gt06load run against a started server, with CPU, RSS and (for the peer with
        PostgreSQL) the wait for its insert queue. `side` is started just before the load
        and joined after it (the bad clients)."""
        kind = srv["kind"]
        tw = wait_time_wait(self.a.time_wait_max) if quiet else None
        quiet = self.wait_quiet() if quiet else None
        busy0, pg0, srv0, la0 = busy_cpu(), pg_cpu(), cpu_of(srv["pid"]), loadavg()
        ov0 = listen_overflows()
        t0 = time.monotonic()
        w0 = time.time()
        side_t = None
        if side:
            side_t = threading.Thread(target=side)
            side_t.start()
            time.sleep(1)
        load, rc, load_cpu, rec, progress, cmd = self.run_load(srv, name, load_args, record)
        t1 = time.monotonic()
        if side_t:
            side_t.join()
        r = {"server": kind, "name": name, "gt06load_cmd": cmd, "gt06load_exit": rc, "wall_start": w0,
             "busy_before_pct_of_core": quiet, "time_wait_before": tw,
             "server_cpus": srv["cpus"], "gt06load_cpus": sorted(self.cpus("load") or [])}
        if kind == "peer-db" and peer_drain:
            r.update(self.peer_drain(srv, load, w0))
        t2 = time.monotonic()
        srv1, pg1, busy1, la1 = cpu_of(srv["pid"]), pg_cpu(), busy_cpu(), loadavg()
        ov1 = listen_overflows()
        rss = srv["sampler"].window(t0, t2)
        dev = load.get("devices", {})
        r.update({
            "devices_requested": dev.get("requested"), "login_ok": dev.get("login_ok"),
            "login_failed": dev.get("login_failed"), "connect_failed": dev.get("connect_failed"),
            "closed_by_server": dev.get("closed_by_server"),
            "positions_sent": load.get("sent", {}).get("positions"),
            "heartbeats_sent": load.get("sent", {}).get("heartbeats"),
            "heartbeats_unacked": load.get("heartbeats_unacked"),
            "heartbeat_ack_ms": load.get("heartbeat_ack_ms"), "login_ack_ms": load.get("login_ack_ms"),
            "achieved_per_s": load.get("rate", {}).get("achieved_positions_per_s"),
            "processed_per_s": load.get("rate", {}).get("processed_positions_per_s"),
            "drain_after_last_send_s": load.get("rate", {}).get("drain_after_last_send_s"),
            "load_errors": load.get("errors"), "progress": progress,
            "rss_before_mib": mib(srv["sampler"].before(t0)), "rss_max_mib": mib(max(rss) if rss else None),
            "rss_end_of_load_mib": mib((srv["sampler"].window(t0, t1) or [None])[-1]),
            "server_cpu_s": round(srv1 - srv0, 1), "postgres_cpu_s": round(pg1 - pg0, 1),
            "gt06load_cpu_s": load_cpu, "wall_s": round(t2 - t0, 1),
            "machine_busy_cpu_s": round(busy1 - busy0, 1), "loadavg_start_end": [la0, la1],
            # machine-wide: handshakes dropped because a listener's accept queue was full
            "listen_overflows": ov1[0] - ov0[0], "listen_drops": ov1[1] - ov0[1],
        })
        ours = r["server_cpu_s"] + r["postgres_cpu_s"] + load_cpu
        r["other_cpu_s"] = round(max(0.0, r["machine_busy_cpu_s"] - ours), 1)
        r["record"] = rec
        return r

    def wait_quiet(self):
        """As the peer's measure.sh: wait (at most --quiet-wait s) until other work on the
        machine uses under 0.3 of a core and the kernel has under 64 MiB left to write
        back (a load right after (a) otherwise waits behind (a)'s data in every fsync);
        returns the last reading, % of one core."""
        deadline = time.monotonic() + self.a.quiet_wait
        while True:
            b0 = busy_cpu()
            time.sleep(2)
            pct = round((busy_cpu() - b0) / 2 * 100)
            if (pct < 30 and dirty_mib() < 64) or time.monotonic() >= deadline:
                return pct

    def peer_drain(self, srv, load, w0):
        """As the peer's bench.sh: the peer ACKs before it stores, so wait (at most
        --peer-drain-max s) until its insert queue is empty; stored/s over first send -> last insert."""
        deadline = time.monotonic() + self.a.peer_drain_max
        drained = False
        while time.monotonic() < deadline:
            st = peer_stats(srv["log"])
            if st and st[-1].get("pending") == 0:
                time.sleep(1.5)
                drained = True
                break
            time.sleep(0.5)
        st = peer_stats(srv["log"])
        final = st[-1] if st else {}
        done = next((x for x in st if x["inserted"] == final.get("inserted")), None)
        first_send = w0 + (load.get("rate", {}).get("first_send_after_start_s") or 0)
        ins = final.get("inserted", 0)
        res = {"peer_drained": drained, "peer_inserted": ins, "peer_pending_at_end": final.get("pending"),
               "peer_insert_errors": final.get("insertErrors"), "peer_parse_errors": final.get("parseErrors"),
               "peer_max_pending": max((x.get("pending", 0) for x in st), default=0)}
        if done and ins:
            res["stored_per_s"] = round(ins / (done["t"] / 1000 - first_send), 1)
            res["insert_backlog_after_load_s"] = round(max(0.0, done["t"] / 1000 - (w0 + load.get("elapsed_s", 0))), 1)
        return res

    def verify_stored(self, srv, r, records):
        """Exports what the server stored and runs verify_record.py against the records."""
        records = [x for x in records if x and os.path.exists(x)]
        if not records:
            return
        d = srv["dir"]
        rec = os.path.join(d, f"{r['name']}.records.jsonl")
        with open(rec, "w") as o:
            for x in records:
                o.write(open(x).read())
        csv = os.path.join(d, f"{r['name']}.stored.csv")
        t0 = time.monotonic()
        if srv["kind"] == "gt06":
            ex = subprocess.run([sys.executable, os.path.join(HERE, "export_gt06.py"), srv["http"], csv,
                                 "4", str(srv.get("export_from", 0))],
                                capture_output=True, text=True)
            r["export"] = last_json(ex.stdout) or {"error": ex.stderr[-500:]}
        elif srv["kind"] == "peer-db":
            with open(csv, "w") as f:
                subprocess.run(self.psql + ["-c", "COPY (SELECT imei, extract(epoch FROM ts), lat, lon, speed, course "
                                                  "FROM positions) TO STDOUT WITH CSV"], stdout=f, check=True)
        else:
            return
        v = subprocess.run([sys.executable, self.verify, rec, csv], capture_output=True, text=True)
        r["verify"] = last_json(v.stdout) or {"error": v.stderr[-500:]}
        r["verify_s"] = round(time.monotonic() - t0, 1)
        for x in records + [rec, csv]:
            if not self.a.keep:
                try:
                    os.remove(x)
                except OSError:
                    pass

    # ---- scenarios
    def scenario_a(self, rd):
        res = {}
        for kind in self.a.servers_a:
            d = os.path.join(rd, "a", kind)
            if kind == "peer-db":
                self.sql("TRUNCATE positions", "CHECKPOINT")
            srv = self.start(kind, d)
            dur = self.a.peak_peer_db_s if kind == "peer-db" else self.a.peak_s
            args = ["--devices", "50", "--max", "--duration", str(dur), "--heartbeat-every", "100", "--window", "8"]
            log(f"a: {kind}")
            # Every server gets the same gt06load command, --record included: recording
            # costs the load generator CPU (nullsink reads ~5 % less with it), so the
            # sink's limit is measured under the load gt06's verified run puts on the
            # machine. Only gt06's and the peer's records are checked.
            r = self.measure(srv, "peak", args, record=True)
            if kind not in ("gt06", "peer-db") and r.get("record"):
                try:
                    os.remove(r["record"])
                except OSError:
                    pass
            if kind == "gt06":
                self.verify_stored(srv, r, [r["record"]])
            r.update(self.stop(srv))
            if kind == "peer-db":
                self.verify_stored(srv, r, [r["record"]])
            r["log_summary"] = log_summary(srv)
            res[kind] = r
            log(f"a: {kind} processed/s {r['processed_per_s']} stored/s {r.get('stored_per_s')} "
                f"verify {brief_verify(r)}")
        return res

    def fleet_args(self, devices=None):
        return ["--devices", str(devices or self.a.fleet), "--rate", "1", "--ramp", str(self.a.fleet_ramp),
                "--duration", str(self.a.fleet_s), "--heartbeat-every", "5"]

    def scenario_b(self, rd):
        res = {}
        if self.a.b_warmup and not self.b_warmed:
            # The first 19,800-tracker load of a benchmark ran slower for every server,
            # nullsink included (its p99 3.8-56 ms in round 1 against 1.1-4.9 ms after, four
            # runs): the same load once against nullsink first, unmeasured.
            d = os.path.join(rd, "b", "warmup-sink")
            srv = self.start("sink", d)
            log("b: warm-up (sink)")
            r = self.measure(srv, "fleet", self.fleet_args(self.a.fleet - self.a.probe), record=False)
            r.update(self.stop(srv))
            res["_warmup"] = {"server": "sink", "heartbeat_ack_ms": r.get("heartbeat_ack_ms"),
                              "login_ok": r.get("login_ok"), "server_cpus": r.get("server_cpus")}
            self.b_warmed = True
        for kind in self.a.servers_b:
            d = os.path.join(rd, "b", kind)
            if kind == "peer-db":
                self.sql("TRUNCATE positions", "CHECKPOINT")
            srv = self.start(kind, d)
            ts = self.start_ts(self.a.fleet_ramp + self.a.fleet_s)
            args = self.fleet_args(self.a.fleet - self.a.probe) + ["--start-ts", str(ts)]
            probe = {}
            side = None
            if self.a.probe:
                # The fleet's own p99 ends in its final barrier: every device sends its last
                # heartbeat at the same instant (a sixth of all heartbeats here). A probe of
                # `--probe` of the trackers, a heartbeat after every fix, joins after the
                # ramp and leaves before the end, so its p99 is the steady state's; with
                # `--probe-to-end` it stays ~3 s past the fleet's end instead, timing a
                # tracker that is not hanging up through the second in which all others do,
                # from a process other than the fleet's meter.
                probe_s = self.a.fleet_s if self.a.probe_to_end else max(5.0, self.a.fleet_s - 10)
                pargs = ["--devices", str(self.a.probe), "--rate", "1", "--ramp", "1",
                         "--duration", str(probe_s), "--heartbeat-every", "1",
                         "--imei-base", "861000000000000", "--start-ts", str(ts)]

                def side():
                    time.sleep(self.a.fleet_ramp + 2)
                    probe["r"] = self.run_load(srv, "probe", pargs, record=kind in ("gt06", "peer-db"))
            log(f"b: {kind}")
            r = self.measure(srv, "fleet", args, record=kind in ("gt06", "peer-db"), side=side)
            records = [r["record"]]
            if probe:
                pl, prc, pcpu, prec, _, pcmd = probe["r"]
                r["other_cpu_s"] = round(max(0.0, r["other_cpu_s"] - pcpu), 1)
                r["probe"] = {"to_end": self.a.probe_to_end, "gt06load_cmd": pcmd, "gt06load_exit": prc, "gt06load_cpu_s": pcpu,
                              "login_ok": pl.get("devices", {}).get("login_ok"),
                              "heartbeats_unacked": pl.get("heartbeats_unacked"),
                              "heartbeat_ack_ms": pl.get("heartbeat_ack_ms"),
                              "positions_sent": pl.get("sent", {}).get("positions")}
                records.append(prec)
            if kind == "gt06":
                self.verify_stored(srv, r, records)
                res["_gt06_data"] = srv["data_dir"]
            r.update(self.stop(srv))
            if kind == "peer-db":
                self.verify_stored(srv, r, records)
            r["log_summary"] = log_summary(srv)
            res[kind] = r
            log(f"b: {kind} probe p99 {((r.get('probe') or {}).get('heartbeat_ack_ms') or {}).get('p99')} login {r['login_ok']}/{r['devices_requested']} unacked {r['heartbeats_unacked']} "
                f"p99 {(r['heartbeat_ack_ms'] or {}).get('p99')} rss {r['rss_max_mib']} verify {brief_verify(r)}")
        return res

    def scenario_d(self, rd, b):
        res = {}
        gt06_data = (b or {}).get("_gt06_data")
        for kind in self.a.servers_d:
            d = os.path.join(rd, "d", kind)
            if kind == "gt06" and not gt06_data:
                # no store from (b) this round: fill one the same way, unmeasured
                srv = self.start("gt06", os.path.join(rd, "d", "gt06-fill"))
                self.run_load(srv, "fill", self.fleet_args() + ["--start-ts", str(self.start_ts(self.a.fleet_ramp + self.a.fleet_s))], record=False)
                self.stop(srv)
                gt06_data = srv["data_dir"]
            srv = self.start(kind, d, data_dir=gt06_data if kind == "gt06" else None)
            rows_before = int(self.sql("SELECT count(*) FROM positions")) if kind == "peer-db" else None
            args = ["--devices", str(self.a.fleet), "--rate", "0.2", "--ramp", "5", "--duration", "10",
                    "--heartbeat-every", "1", "--start-ts", str(self.start_ts(15))]
            log(f"d: {kind} (store: {gt06_data if kind == 'gt06' else rows_before})")
            r = self.measure(srv, "storm", args, record=kind in ("gt06", "peer-db"))
            r["startup_s"] = srv["startup_s"]
            r["store_rows_before"] = rows_before
            if kind == "gt06":
                self.verify_stored(srv, r, [r["record"]])
            r.update(self.stop(srv))
            if kind == "peer-db":
                self.verify_stored(srv, r, [r["record"]])
            r["logged_in_at_10s"] = progress_at(r["progress"], 10)
            lm = (r["login_ack_ms"] or {}).get("max")
            r["ramp_plus_login_max_s"] = round(5 + lm / 1000, 2) if lm is not None else None
            if r["rss_before_mib"] and r["rss_max_mib"] and r["login_ok"]:
                r["rss_per_connection_kib"] = round((r["rss_max_mib"] - r["rss_before_mib"]) * 1024 / r["login_ok"], 1)
            r["log_summary"] = log_summary(srv)
            res[kind] = r
            log(f"d: {kind} login {r['login_ok']}/{r['devices_requested']} at10s {r['logged_in_at_10s']} "
                f"login max {lm} ms verify {brief_verify(r)}")
        return res

    def scenario_e(self, rd):
        res = {}
        for kind in self.a.servers_e:
            d = os.path.join(rd, "e", kind)
            srv = self.start(kind, d)
            dur = self.a.bad_s
            runs = []
            records = []
            # Alone, with bad clients, alone, …: --bad-pairs pairs and a last load alone,
            # so each load with bad clients has a load alone on both sides.
            plan = [("base1", False)]
            if self.a.e_warmup:
                # A fresh process pays once for what its first loads grow (heap, the
                # runtime's tasks and buffers): measured, and kept out of the means.
                plan.insert(0, ("warm", False))
            for i in range(self.a.bad_pairs):
                plan += [(f"bad{i + 1}", True), (f"base{i + 2}", False)]
            for name, bad in plan:
                args = ["--devices", str(self.a.bad_fleet), "--rate", "1", "--ramp", "5", "--duration", str(dur),
                        "--heartbeat-every", "5", "--start-ts", str(self.start_ts(5 + dur))]
                side = None
                if bad:
                    bad_out = os.path.join(d, "badclients.json")
                    side = lambda: subprocess.run([sys.executable, os.path.join(HERE, "badclients.py"), srv["tcp"],
                                                   str(dur + 8), bad_out], capture_output=True)
                log(f"e: {kind} {name}")
                r = self.measure(srv, name, args, record=kind == "gt06", side=side)
                if bad:
                    r["bad_clients"] = json.load(open(bad_out)) if os.path.exists(bad_out) else None
                records.append(r["record"])
                runs.append(r)
                log(f"e: {kind} {name} p99 {(r['heartbeat_ack_ms'] or {}).get('p99')} unacked {r['heartbeats_unacked']}")
            v = {"name": "e-all"}
            if kind == "gt06":
                self.verify_stored(srv, v, records)
            stop = self.stop(srv)
            p99 = [(x["heartbeat_ack_ms"] or {}).get("p99") for x in runs]
            base = [p for p, x in zip(p99, runs) if x["name"].startswith("base") and p is not None]
            bads = [p for p, x in zip(p99, runs) if x["name"].startswith("bad") and p is not None]
            res[kind] = {"runs": runs, "verify": v.get("verify"), "export": v.get("export"), **stop,
                         "p99_base_mean": round(statistics.mean(base), 3) if base else None,
                         "p99_bad": round(statistics.mean(bads), 3) if bads else None,
                         "p99_change_pct": round((statistics.mean(bads) / statistics.mean(base) - 1) * 100, 1)
                         if base and bads else None,
                         "log_summary": log_summary(srv), "bad_log_lines": bad_log_lines(srv)}
        return res

    def scenario_c(self, rd):
        res = {}
        for kind in self.a.servers_c:
            d = os.path.join(rd, "c", kind)
            if kind == "peer-db":
                self.sql("TRUNCATE positions", "CHECKPOINT")
            data_dir, prefill = None, None
            if kind == "gt06" and self.a.soak_prefill > 0:
                data_dir = os.path.join(d, "data")
                t0 = time.monotonic()
                pre = subprocess.run([self.a.gt06, "bench-store", "--dir", data_dir, "--devices", "1000",
                                      "--per-device", str(self.a.soak_prefill)],
                                     capture_output=True, text=True, check=True)
                prefill = {**(last_json(pre.stdout) or {}), "seconds": round(time.monotonic() - t0, 1)}
                log(f"c: prefilled {prefill.get('positions')} positions")
            srv = self.start(kind, d, data_dir)
            # Only the soak's own fixes are exported and checked, not the prefill.
            srv["export_from"] = max(self.next_ts, int(time.time()) - 5)
            minutes = []
            for m in range(self.a.soak_minutes):
                args = ["--devices", "1000", "--rate", "1", "--ramp", "1", "--duration", "59",
                        "--heartbeat-every", "5", "--start-ts", str(self.start_ts(60))]
                # back to back: no wait for a quiet machine between the minutes of a soak
                r = self.measure(srv, f"min{m + 1:02d}", args, record=kind in ("gt06", "peer-db"),
                                 peer_drain=False, quiet=m == 0)
                minutes.append(r)
                log(f"c: {kind} minute {m + 1} p99 {(r['heartbeat_ack_ms'] or {}).get('p99')} rss {r['rss_max_mib']}")
            v = {"name": "soak"}
            if kind == "peer-db":
                v.update(self.peer_drain(srv, {}, minutes[0]["wall_start"]))
            if kind == "gt06":
                self.verify_stored(srv, v, [x["record"] for x in minutes])
            stop = self.stop(srv)
            if kind == "peer-db":
                self.verify_stored(srv, v, [x["record"] for x in minutes])
            rss1, rssn = minutes[0]["rss_max_mib"], minutes[-1]["rss_max_mib"]
            res[kind] = {"minutes": minutes, "verify": v.get("verify"), "export": v.get("export"), **stop,
                         "rss_first_min_mib": rss1, "rss_last_min_mib": rssn,
                         "rss_growth_pct": round((rssn / rss1 - 1) * 100, 1) if rss1 and rssn else None,
                         "p99_per_minute": [(x["heartbeat_ack_ms"] or {}).get("p99") for x in minutes],
                         "unacked_total": sum(x["heartbeats_unacked"] or 0 for x in minutes),
                         "log_summary": log_summary(srv)}
            if prefill:
                res[kind]["prefill"] = prefill
        return res

    def run(self):
        t_all = time.monotonic()
        for i in range(self.a.repeats):
            rd = os.path.join(self.out, f"round{i + 1}")
            rnd = {"round": i + 1, "started": time.strftime("%H:%M:%S"), "loadavg_start": loadavg()}
            self.results["rounds"].append(rnd)
            for sc in self.a.scenarios:
                self.scenario = sc
                t0 = time.monotonic()
                try:
                    if sc == "a":
                        rnd["a"] = self.scenario_a(rd)
                    elif sc == "b":
                        rnd["b"] = self.scenario_b(rd)
                    elif sc == "d":
                        rnd["d"] = self.scenario_d(rd, rnd.get("b"))
                    elif sc == "e":
                        rnd["e"] = self.scenario_e(rd)
                except Exception as e:  # keep the other scenarios' numbers
                    log(f"scenario {sc} failed: {e!r}")
                    rnd[f"{sc}_error"] = repr(e)
                rnd[f"{sc}_wall_s"] = round(time.monotonic() - t0, 1)
                self.save()
            if self.a.soak == "each" or (self.a.soak == "once" and i == 0):
                t0 = time.monotonic()
                try:
                    self.scenario = "c"
                    rnd["c"] = self.scenario_c(rd)
                except Exception as e:
                    log(f"scenario c failed: {e!r}")
                    rnd["c_error"] = repr(e)
                rnd["c_wall_s"] = round(time.monotonic() - t0, 1)
            rnd["wall_s"] = round(time.monotonic() - t_all, 1)
            self.save()
        self.results["total_wall_s"] = round(time.monotonic() - t_all, 1)
        self.results["machine_end"] = machine_notes()
        self.save()
        rep = report(self.results)
        open(os.path.join(self.out, "report.md"), "w").write(rep)
        print(rep)


# ---- helpers
def wait_time_wait(limit_s, below=2000):
    """Waits (at most limit_s) until the previous runs' TIME_WAIT sockets are gone: with
    tens of thousands of them on the loopback addresses, the kernel's port search in
    connect() costs gt06load's one thread seconds (measured: a storm right after another
    storm spent 21.8 s of gt06load CPU and stalled it for 18 s; alone, 2.9 s and none).
    Returns how many were left."""
    deadline = time.monotonic() + limit_s
    while True:
        out = subprocess.run(["ss", "-Htan", "state", "time-wait"], capture_output=True, text=True).stdout
        n = out.count("\n")
        if n < below or time.monotonic() >= deadline:
            return n
        time.sleep(1)


def listen_overflows():
    """TcpExt ListenOverflows, ListenDrops (all of the machine's listeners)."""
    lines = [ln.split() for ln in open("/proc/net/netstat") if ln.startswith("TcpExt:")]
    if len(lines) < 2:
        return (0, 0)
    d = dict(zip(lines[0][1:], (int(x) for x in lines[1][1:])))
    return (d.get("ListenOverflows", 0), d.get("ListenDrops", 0))


def wait_for_line(path, pattern, timeout):
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        for line in open(path):
            m = rx.search(line)
            if m:
                return m.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"no /{pattern}/ in {path} after {timeout} s")


def peer_stats(path):
    out = []
    for line in open(path):
        if line.startswith("stats "):
            try:
                out.append(json.loads(line[6:]))
            except ValueError:
                pass
    return out


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def progress_at(progress, secs):
    """`logged in` count of gt06load's first progress line at or after SECS seconds, and
    that line's time (a starved load generator prints its 5-second ticks late)."""
    for p in progress:
        m = re.match(r"\[\s*(\d+)s\] connected (\d+) logged in (\d+)", p)
        if m and int(m.group(1)) >= secs:
            return [int(m.group(3)), int(m.group(1))]
    return None


def log_summary(srv):
    """Count of the server's warn/error lines by reason (gt06), or its last stats (peer)."""
    if srv["kind"] != "gt06":
        return None
    counts = {}
    for line in open(srv["log"], errors="replace"):
        if " WARN " in line or " ERROR " in line:
            m = re.search(r'reason="?([a-z_]+)', line)
            key = ("ERROR " if " ERROR " in line else "WARN ") + (m.group(1) if m else line.split(": ", 1)[-1][:60].strip())
            counts[key] = counts.get(key, 0) + 1
    return counts


def bad_log_lines(srv):
    """The gt06 log lines about the misbehaving clients (not the fleet's IMEIs 86000…)."""
    out = []
    for line in open(srv["log"], errors="replace"):
        if (" WARN " in line or " ERROR " in line) and "imei=86000" not in line and "time_offset" not in line:
            out.append(line.strip()[:300])
    return out[:40]


def brief_verify(r):
    v = r.get("verify")
    if not v:
        return None
    return {k: v.get(k) for k in ("sent", "stored_distinct", "missing", "differing")}


def tcp_extra_keys(example, extra):
    """Config lines for [tcp] so loopback benchmarks are not refused by a per-IP cap: any
    per-IP key gt06.toml.example documents is set far above the descriptor limit."""
    lines = []
    if example and os.path.exists(example):
        section = None
        for line in open(example):
            m = re.match(r"#\s*\[([a-z_.]+)\]", line)
            if m:
                section = m.group(1)
            m = re.match(r"#\s*([a-z_]*per_ip[a-z_]*)\s*=", line)
            if m and section == "tcp":
                lines.append(f"{m.group(1)} = 50000")
    lines += [x for x in (extra or "").split(";") if x.strip()]
    return "".join(x.strip() + "\n" for x in lines)


def machine_notes():
    cpu = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = open("/proc/meminfo").readline().split()[1]
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu, "cores": os.cpu_count(),
            "mem_total_mib": int(mem) // 1024, "loadavg": open("/proc/loadavg").read().strip(),
            "kernel": os.uname().release, "nice": os.nice(0), "nofile_soft_hard": list(__import__("resource").getrlimit(7)),
            "top_cpu": top.splitlines()[1:6]}


def f(v, nd=0):
    if v is None:
        return "–"
    if isinstance(v, float) or isinstance(v, int):
        return f"{v:,.{nd}f}"
    return str(v)


def probe_cell(r):
    p = r.get("probe")
    if not p:
        return "–"
    h = p.get("heartbeat_ack_ms") or {}
    return f"{f(h.get('p50'), 2)} / {f(h.get('p99'), 2)} / {f(h.get('max'), 1)} ({p.get('heartbeats_unacked')})"


def at_10s(v):
    if not v:
        return "–"
    return f"{v[0]:,}" + ("" if v[1] == 10 else f" (at {v[1]} s)")


def peer_backlog(r):
    if r.get("server") != "peer-db":
        return "–"
    if r.get("peer_drained"):
        return f"{f(r.get('insert_backlog_after_load_s'), 1)} s"
    return f"not drained: {f(r.get('peer_pending_at_end'))} pending"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def report(res):
    rounds = res["rounds"]
    L = [f"Started {res['started']}; total wall {res.get('total_wall_s')} s.", ""]

    def hb(r, k="p99"):
        return ((r or {}).get("heartbeat_ack_ms") or {}).get(k)

    # a
    rows = [(x["round"], x["a"]) for x in rounds if "a" in x]
    if rows:
        L += ["### a) peak durable ingest (50 devices, --max, heartbeat every 100, window 8)", "",
              "Every server got the same gt06load command, `--record` included.", "",
              "| round | sink processed/s | peer nodb processed/s | peer db stored/s | gt06 processed/s (durable) | gt06 stored = sent? | gt06 HB p99 ms | gt06 RSS max MiB | gt06 / peer stored | gt06 / sink | other CPU s (sink/peer/gt06) | load avg |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        ra, rs = [], []
        for n, a in rows:
            s, pn, pd, g = (a.get(k, {}) for k in ("sink", "peer-nodb", "peer-db", "gt06"))
            r1 = g.get("processed_per_s") / pd["stored_per_s"] if g.get("processed_per_s") and pd.get("stored_per_s") else None
            r2 = g.get("processed_per_s") / s["processed_per_s"] if g.get("processed_per_s") and s.get("processed_per_s") else None
            ra.append(r1)
            rs.append(r2)
            v = g.get("verify") or {}
            L.append(f"| {n} | {f(s.get('processed_per_s'))} | {f(pn.get('processed_per_s'))} | {f(pd.get('stored_per_s'))} | "
                     f"{f(g.get('processed_per_s'))} | {v.get('stored_distinct')}/{v.get('sent')} missing {v.get('missing')} | "
                     f"{f(hb(g), 1)} | {f(g.get('rss_max_mib'))} | {f(r1, 1)}× | {f(r2 * 100 if r2 else None)} % | "
                     f"{f(s.get('other_cpu_s'), 1)}/{f(pd.get('other_cpu_s'), 1)}/{f(g.get('other_cpu_s'), 1)} | "
                     f"{g.get('loadavg_start_end')} |")
        L.append(f"| median | | | | {f(med([a.get('gt06', {}).get('processed_per_s') for _, a in rows]))} | | | | "
                 f"{f(med(ra), 1)}× | {f(med(rs) * 100 if med(rs) else None)} % | | |")
        L.append("")
    # b
    rows = [(x["round"], x["b"]) for x in rounds if "b" in x]
    if rows:
        to_end = any((r.get("probe") or {}).get("to_end") for _, b in rows for r in b.values()
                     if isinstance(r, dict))
        pinned = any(r.get("server_cpus") for _, b in rows for r in b.values() if isinstance(r, dict))
        L += ["### b) 19,900 trackers at 1 fix/s", "",
              *(["Servers on CPU 0, gt06load (fleet and probe) on CPU 1.", ""] if pinned else []),
              *([f"Before round 1, the same fleet against nullsink, unmeasured (its HB ACK p99 "
                 f"{hb(rows[0][1]['_warmup'])} ms).", ""] if rows[0][1].get("_warmup") else []),
              f"| round | server | logins ok | HB sent / unACKed | HB ACK p50 / p99 / max ms | probe{' (to the end)' if to_end else ''} HB p50 / p99 / max ms (unACKed) | RSS max MiB | stored: missing of sent | peer backlog after load s | server CPU s | other CPU s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, b in rows:
            for k in ("sink", "peer-nodb", "peer-db", "gt06"):
                r = b.get(k)
                if not r:
                    continue
                v = r.get("verify") or {}
                L.append(f"| {n} | {k} | {r['login_ok']}/{r['devices_requested']} | {f(r['heartbeats_sent'])} / {f(r['heartbeats_unacked'])} | "
                         f"{f(hb(r, 'p50'), 2)} / {f(hb(r), 2)} / {f(hb(r, 'max'), 1)} | {probe_cell(r)} | {f(r['rss_max_mib'])} | "
                         f"{(str(v.get('missing')) + ' of ' + f(v.get('sent'))) if v else '–'} | {peer_backlog(r)} | "
                         f"{f(r['server_cpu_s'], 1)} | {f(r['other_cpu_s'], 1)} |")
        L.append("")
    # d
    rows = [(x["round"], x["d"]) for x in rounds if "d" in x]
    if rows:
        L += ["### d) reconnect storm: 19,900 trackers within 5 s to a restarted server holding (b)'s store", "",
              "| round | server | startup s | logins ok | logged in at 10 s | login ACK p99 / max ms | 5 s + max login ACK | listen overflows | RSS before → max MiB (per connection KiB) | stored: missing |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for n, d in rows:
            for k in ("sink", "peer-db", "gt06"):
                r = d.get(k)
                if not r:
                    continue
                la = r.get("login_ack_ms") or {}
                v = r.get("verify") or {}
                L.append(f"| {n} | {k} | {f(r.get('startup_s'), 2)} | {r['login_ok']}/{r['devices_requested']} | {at_10s(r['logged_in_at_10s'])} | "
                         f"{f(la.get('p99'), 1)} / {f(la.get('max'), 1)} | {f(r['ramp_plus_login_max_s'], 2)} s | {f(r.get('listen_overflows'))} | "
                         f"{f(r['rss_before_mib'])} → {f(r['rss_max_mib'])} ({f(r.get('rss_per_connection_kib'), 1)}) | "
                         f"{v.get('missing', '–')} of {f(v.get('sent'))} |")
        L.append("")
    # e
    rows = [(x["round"], x["e"]) for x in rounds if "e" in x]
    if rows:
        L += ["### e) bad input under load", "",
              "| round | server | HB p99 ms, alone / with bad clients alternating (a first `warm` load, if any, is not in the means) | mean with bad vs mean alone | unACKed | slowloris / junk / deaf closed after s | idle closed | missing |",
              "|---|---|---|---|---|---|---|---|"]
        for n, e in rows:
            for k, r in e.items():
                runs = r["runs"]
                bc = next((x["bad_clients"] for x in runs if x.get("bad_clients")), None) or {}
                L.append(f"| {n} | {k} | {' / '.join(('warm ' if x['name'] == 'warm' else '') + f(hb(x), 2) for x in runs)} | {f(r['p99_change_pct'], 1)} % | "
                         f"{sum(x['heartbeats_unacked'] or 0 for x in runs)} | "
                         f"{' / '.join(f((bc.get(c) or {}).get('closed_after_s'), 1) for c in ('slowloris', 'junk', 'deaf'))} | "
                         f"{(bc.get('idle') or {}).get('closed_by_server')}/{(bc.get('idle') or {}).get('connected')} | "
                         f"{(r.get('verify') or {}).get('missing', '–')} |")
        L.append("")
    # c
    rows = [(x["round"], x["c"]) for x in rounds if "c" in x]
    if rows:
        L += ["### c) soak: 1,000 trackers at 1 Hz, consecutive one-minute loads", "",
              "| round | server | RSS max minute 1 → last MiB (growth) | HB p99 ms per minute | unACKed | missing of sent |",
              "|---|---|---|---|---|---|"]
        for n, c in rows:
            for k, r in c.items():
                v = r.get("verify") or {}
                L.append(f"| {n} | {k} | {f(r['rss_first_min_mib'])} → {f(r['rss_last_min_mib'])} ({f(r['rss_growth_pct'], 1)} %) | "
                         f"{', '.join(f(p, 1) for p in r['p99_per_minute'])} | {r['unacked_total']} | {v.get('missing', '–')} of {f(v.get('sent'))} |")
        L.append("")
    return "\n".join(L)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scratch", required=True)
    p.add_argument("--gt06", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config-example", default=None)
    p.add_argument("--tcp-extra", default=os.environ.get("GT06_TCP_EXTRA", ""),
                   help="extra [tcp] config lines for gt06, ';'-separated")
    p.add_argument("--store-extra", default=os.environ.get("GT06_STORE_EXTRA", ""),
                   help="extra [store] config lines for gt06, ';'-separated "
                        "(e.g. checkpoint_interval_secs = 60)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scenarios", default="a,b,d,e")
    p.add_argument("--soak", choices=["once", "each", "off"], default="once")
    p.add_argument("--soak-minutes", type=int, default=10)
    p.add_argument("--soak-prefill", type=int, default=0,
                   help="(c): gt06 starts on a store already holding this many positions per "
                        "soak device (written by `gt06 bench-store`, months before the soak's "
                        "fixes), as a server that has been running for a while does; 0: empty")
    p.add_argument("--peak-s", type=float, default=15)
    p.add_argument("--peak-peer-db-s", type=float, default=3,
                   help="the peer queues every INSERT flat out: a short send keeps its drain in minutes")
    p.add_argument("--fleet", type=int, default=19900)
    p.add_argument("--fleet-ramp", type=float, default=10)
    p.add_argument("--fleet-s", type=float, default=30)
    p.add_argument("--probe", type=int, default=100,
                   help="(b): this many of the trackers form a steady-state latency probe (0: none)")
    p.add_argument("--probe-to-end", action="store_true",
                   help="(b): the probe stays past the fleet's end (its last second: every tracker hangs up)")
    p.add_argument("--bad-fleet", type=int, default=5000)
    p.add_argument("--bad-s", type=float, default=30)
    p.add_argument("--bad-pairs", type=int, default=1,
                   help="(e): loads with bad clients, each followed by one alone (after a first alone)")
    p.add_argument("--b-warmup", action="store_true",
                   help="(b): before the first round, the fleet load once against nullsink, unmeasured")
    p.add_argument("--e-warmup", action="store_true",
                   help="(e): one load alone before the measured ones, reported but not in the means")
    p.add_argument("--peer-drain-max", type=float, default=120,
                   help="longest wait for the peer's INSERT queue after a load, s")
    p.add_argument("--time-wait-max", type=float, default=70,
                   help="longest wait for earlier runs' TIME_WAIT sockets to expire before a measurement, s")
    p.add_argument("--quiet-wait", type=float, default=10,
                   help="longest wait for the machine to be quiet before each measurement, s")
    p.add_argument("--pgport", type=int, default=54329)
    p.add_argument("--pin", default="b",
                   help="scenarios in which servers run on CPU 0 and gt06load on CPU 1 ('' for none)")
    p.add_argument("--src-ips", type=int, default=4, help="gt06load --src-ips (127.0.0.1..N)")
    p.add_argument("--keep", action="store_true", help="keep records and exports")
    p.add_argument("--servers-a", default="sink,peer-nodb,peer-db,gt06")
    p.add_argument("--servers-b", default="sink,peer-nodb,peer-db,gt06")
    p.add_argument("--servers-c", default="peer-db,gt06")
    p.add_argument("--servers-d", default="sink,peer-db,gt06")
    p.add_argument("--servers-e", default="gt06")
    a = p.parse_args()
    a.scenarios = [x for x in a.scenarios.split(",") if x and x != "c"]
    a.pin = {x for x in a.pin.split(",") if x}
    for k in ("servers_a", "servers_b", "servers_c", "servers_d", "servers_e"):
        setattr(a, k, [x for x in getattr(a, k).split(",") if x])
    Bench(a).run()


if __name__ == "__main__":
    main()
