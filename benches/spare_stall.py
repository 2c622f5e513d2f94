#!/usr/bin/env python3
"""What writing a spare journal segment does to the group commits beside it.

The journal fills its next segment with zeros (`spare.tmp`, 32 MiB) on a thread while
the writer commits: small writes each followed by `fdatasync`. This reproduces both
sides with the same sizes on the data directory's filesystem and reports the commits'
latency while the spare is written, for the two ways of writing it:

  burst  32 writes of 1 MiB, one sync at the end (gt06 before the eleventh session)
  step   the same, each MiB synced and followed by a 2 ms pause (`fill_spare` now)

On ext4 (data=ordered) a commit's fdatasync also flushes other files' newly placed
dirty blocks, so in `burst` a commit can wait for most of the 32 MiB.

    python3 benches/spare_stall.py [DIR] [ROUNDS]
"""
import os
import sys
import threading
import time

MIB = 1 << 20


def one(mode, d):
    a = os.open(os.path.join(d, "commits"), os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    os.pwrite(a, b"\0" * MIB, 0)
    os.fsync(a)
    lat, stop = [], threading.Event()

    def committer():
        off = 0
        # Bounded: at most 10 s of commits whatever happens to the spare.
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            t = time.perf_counter()
            os.pwrite(a, b"x" * 4000, off)
            os.fdatasync(a)
            lat.append((t, time.perf_counter() - t))
            off = (off + 4000) % MIB
            time.sleep(0.001)

    th = threading.Thread(target=committer)
    th.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    path = os.path.join(d, "spare")
    b = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    zeros = b"\0" * MIB
    for _ in range(32):
        os.write(b, zeros)
        if mode == "step":
            os.fdatasync(b)
            time.sleep(0.002)
    os.fsync(b)
    t1 = time.perf_counter()
    time.sleep(1.0)
    stop.set()
    th.join()
    os.close(b)
    os.close(a)
    os.unlink(path)
    os.unlink(os.path.join(d, "commits"))
    during = sorted(x for t, x in lat if t0 - 0.01 <= t <= t1 + 0.5)
    before = sorted(x for t, x in lat if t < t0)
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {
        "mode": mode,
        "spare_ms": ms(t1 - t0),
        "before_p50_ms": ms(before[len(before) // 2]),
        "before_max_ms": ms(before[-1]),
        "during_n": len(during),
        "during_p50_ms": ms(during[len(during) // 2]),
        "during_p99_ms": ms(during[int(len(during) * 0.99)]),
        "during_max_ms": ms(during[-1]),
    }


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "."
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    d = os.path.join(d, f"spare-stall-{os.getpid()}")
    os.makedirs(d)
    try:
        print("| round | spare written as | spare took ms | commit p50 / max before, ms | commits during | p50 / p99 / max during, ms |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in range(1, rounds + 1):
            for mode in ("burst", "step"):
                x = one(mode, d)
                print(f"| {r} | {mode} | {x['spare_ms']} | {x['before_p50_ms']} / {x['before_max_ms']} | "
                      f"{x['during_n']} | {x['during_p50_ms']} / {x['during_p99_ms']} / {x['during_max_ms']} |")
    finally:
        os.rmdir(d)


if __name__ == "__main__":
    main()
