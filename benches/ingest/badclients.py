#!/usr/bin/env python3
"""Misbehaving GT06 clients for the bad-input-under-load scenario (loopback only).

    badclients.py HOST:PORT SECONDS OUT.json [IMEI]

For SECONDS it runs, side by side:
  - slowloris: sends the first bytes of a valid login frame, one byte every 5 s;
  - junk: sends 1 MiB of random bytes as fast as the server takes them;
  - deaf: a valid login, then heartbeats as fast as the socket takes them, never reading
    a single answer;
  - idle: 1,000 connections that never send anything (no login).
Then writes OUT.json: for each kind, whether and after how many seconds the server closed
it (for idle: how many were closed), and bytes sent. Nothing here judges the result.
"""
import json
import os
import select
import selectors
import socket
import sys
import threading
import time


def crc_itu(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return (~crc) & 0xFFFF


def frame(proto, payload, serial):
    body = bytes([len(payload) + 5, proto]) + payload + serial.to_bytes(2, "big")
    return b"\x78\x78" + body + crc_itu(body).to_bytes(2, "big") + b"\r\n"


def login(imei, serial=1):
    digits = "0" + imei  # 16 BCD digits
    return frame(0x01, bytes.fromhex(digits), serial)


def heartbeat(serial):
    # terminal info, voltage level, GSM signal, language (2 bytes)
    return frame(0x13, bytes([0x46, 0x06, 0x04, 0x00, 0x02]), serial)


def closed_by_peer(sock):
    """True when the server has closed (EOF or reset), without blocking (a socket with a
    timeout would wait for readability first, so ask select)."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return False
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except OSError:
        return True


def connect(addr):
    s = socket.create_connection(addr, timeout=10)
    return s


def slowloris(addr, until, res):
    t0 = time.monotonic()
    s = connect(addr)
    payload = login("868000000000001")
    i = 0
    while time.monotonic() < until:
        if closed_by_peer(s):
            res["closed_after_s"] = round(time.monotonic() - t0, 2)
            break
        if i < len(payload):
            try:
                s.send(payload[i:i + 1])
                i += 1
            except OSError:
                res["closed_after_s"] = round(time.monotonic() - t0, 2)
                break
        time.sleep(5)
    res["bytes_sent"] = i
    s.close()


def junk(addr, until, res):
    t0 = time.monotonic()
    s = connect(addr)
    data = os.urandom(1 << 20)
    sent = 0
    s.settimeout(1)
    while sent < len(data) and time.monotonic() < until:
        try:
            sent += s.send(data[sent:sent + 16384])
        except socket.timeout:
            continue
        except OSError:
            break
    res["bytes_sent"] = sent
    while time.monotonic() < until:
        if closed_by_peer(s):
            break
        time.sleep(0.2)
    if closed_by_peer(s):
        res["closed_after_s"] = round(time.monotonic() - t0, 2)
    s.close()


def deaf(addr, until, imei, res):
    t0 = time.monotonic()
    s = connect(addr)
    s.sendall(login(imei))
    serial = 2
    sent = 0
    s.settimeout(1)
    closed = False
    while time.monotonic() < until:
        chunk = b"".join(heartbeat((serial + k) & 0xFFFF) for k in range(256))
        serial += 256
        try:
            sent += s.send(chunk)
        except socket.timeout:
            if closed_by_peer(s):
                closed = True
                break
            continue
        except OSError:
            closed = True
            break
    # what the server did with a client that stopped reading
    if closed or closed_by_peer(s):
        res["closed_after_s"] = round(time.monotonic() - t0, 2)
    res["bytes_sent"] = sent
    s.close()


def idle(addr, until, n, res):
    socks = []
    failed = 0
    for _ in range(n):
        try:
            socks.append(connect(addr))
        except OSError:
            failed += 1
    res["connected"] = len(socks)
    res["connect_failed"] = failed
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    while time.monotonic() < until and closed < len(socks):
        for key, _ in sel.select(timeout=0.5):
            sel.unregister(key.fileobj)
            closed += 1
    res["closed_by_server"] = closed
    for s in socks:
        s.close()


def main(target, seconds, out, imei="868000000000002"):
    host, port = target.rsplit(":", 1)
    addr = (host, int(port))
    until = time.monotonic() + float(seconds)
    res = {k: {"closed_after_s": None} for k in ("slowloris", "junk", "deaf")}
    res["idle"] = {}
    ts = [
        threading.Thread(target=slowloris, args=(addr, until, res["slowloris"])),
        threading.Thread(target=junk, args=(addr, until, res["junk"])),
        threading.Thread(target=deaf, args=(addr, until, imei, res["deaf"])),
        threading.Thread(target=idle, args=(addr, until, 1000, res["idle"])),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    json.dump(res, open(out, "w"))
    print(json.dumps(res))


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(*sys.argv[1:])
