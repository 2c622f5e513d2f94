// End-to-end test of the web map, as a person would use it: the REAL gt06 binary, two fake
// GT06 trackers talking the binary protocol over TCP, and Debian's Chromium looking at the page.
//
//   GT06_BIN=/path/to/gt06 node --test map.test.mjs
//
// Environment:
//   GT06_BIN        the gt06 binary (required)
//   CHROMIUM        the Chromium executable (default /usr/bin/chromium)
//   GT06_ARTIFACTS  where to save map.png (default: a new temp dir, printed)
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT_MS = 30_000;   // no step may take longer than this
const UI_WAIT_MS = 15_000;        // the page polls every 3 s; 15 s is five chances
const ACK_WAIT_MS = 5_000;        // a real tracker gives up on an answer after ~5 s

// ---------------------------------------------------------------------------------------------
// GT06 frames (docs: shared/design/gt06-protocol.md §2, §3, §6, §8.1, §8.4)

/** CRC-16/X-25 (GT06 "CRC-ITU"): reflected poly 0x8408, init 0xFFFF, xorout 0xFFFF. */
function crc16x25(bytes) {
  let crc = 0xffff;
  for (const b of bytes) {
    crc ^= b;
    for (let i = 0; i < 8; i++) crc = crc & 1 ? (crc >>> 1) ^ 0x8408 : crc >>> 1;
  }
  return (crc ^ 0xffff) & 0xffff;
}

function u16(n) {
  return Buffer.from([(n >>> 8) & 0xff, n & 0xff]);
}

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** A short (0x7878) frame: 78 78 LEN PROTO CONTENT SERIAL CRC 0D 0A; CRC over LEN..SERIAL. */
function frame(proto, content, serial) {
  const len = 1 + content.length + 2 + 2;
  assert.ok(len <= 0xff, 'short frame too long');
  const covered = Buffer.concat([Buffer.from([len, proto]), content, u16(serial)]);
  return Buffer.concat([Buffer.from([0x78, 0x78]), covered, u16(crc16x25(covered)), Buffer.from([0x0d, 0x0a])]);
}

/** IMEI as 8 BCD bytes: "0" + 15 digits. */
function imeiBcd(imei) {
  assert.match(imei, /^\d{15}$/);
  return Buffer.from('0' + imei, 'hex');
}

/** 6 binary bytes YY MM DD hh mm ss, UTC. */
function gt06Time(date) {
  return Buffer.from([
    date.getUTCFullYear() - 2000, date.getUTCMonth() + 1, date.getUTCDate(),
    date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds(),
  ]);
}

/** 0x12 content: GPS block (18) + 2G LBS (8). */
function locationContent({ time, lat, lon, speed, course, satellites = 5 }) {
  let courseWord = 1 << 12;                 // GPS fixed
  if (lat >= 0) courseWord |= 1 << 10;      // north
  if (lon < 0) courseWord |= 1 << 11;       // west
  courseWord |= course & 0x3ff;
  return Buffer.concat([
    gt06Time(time),
    Buffer.from([0xc0 | (satellites & 0x0f)]),  // 0xC5 for 5 satellites
    u32(Math.round(Math.abs(lat) * 1_800_000)),
    u32(Math.round(Math.abs(lon) * 1_800_000)),
    Buffer.from([speed & 0xff]),
    u16(courseWord),
    u16(246), Buffer.from([1]), u16(110), Buffer.from([0x00, 0x55, 0xda]),  // MCC MNC LAC CID
  ]);
}

const hex = (buf) => Buffer.from(buf).toString('hex').replace(/(..)(?!$)/g, '$1 ');

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves when `promise` settles or after `ms`, whichever is first; never rejects. */
async function bounded(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(resolve, ms); });
  try {
    await Promise.race([promise.catch(() => {}), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `check` (sync or async) every 50 ms until it returns a truthy value or `ms` pass.
 * An exception from `check` ends the wait at once (a dead server is not worth waiting for).
 */
async function waitUntil(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** One fake tracker on one TCP connection. */
class Tracker {
  constructor(imei) {
    this.imei = imei;
    this.serial = 0;
    this.rx = Buffer.alloc(0);
    this.closed = false;
    this.error = null;
    this.sent = [];   // the positions sent, for the assertions
  }

  async connect(host, port) {
    this.sock = net.connect({ host, port });
    this.sock.setNoDelay(true);
    this.sock.on('data', (d) => { this.rx = Buffer.concat([this.rx, d]); });
    this.sock.on('error', (e) => { this.error = e; });
    this.sock.on('close', () => { this.closed = true; });
    await waitUntil(`TCP connection of ${this.imei} to ${host}:${port}`, ACK_WAIT_MS, () => {
      if (this.error) throw this.error;
      return this.sock.readyState === 'open';
    });
  }

  nextSerial() {
    this.serial = (this.serial + 1) & 0xffff;
    return this.serial;
  }

  write(buf) {
    if (this.closed) throw new Error(`the server closed the connection of ${this.imei}`);
    this.sock.write(buf);
  }

  async readExactly(n, what) {
    await waitUntil(`${what} (${n} bytes) for ${this.imei}`, ACK_WAIT_MS, () => {
      if (this.rx.length >= n) return true;
      if (this.closed) throw new Error(`connection closed, received so far: ${hex(this.rx) || 'nothing'}`);
      return false;
    });
    const out = this.rx.subarray(0, n);
    this.rx = this.rx.subarray(n);
    return out;
  }

  /** Waits until the exact byte sequence arrives (other answers before it are allowed). */
  async waitForBytes(expected, what) {
    await waitUntil(`${what} ${hex(expected)} for ${this.imei}`, ACK_WAIT_MS, () => {
      if (this.rx.indexOf(expected) !== -1) return true;
      if (this.closed) throw new Error(`connection closed, received: ${hex(this.rx) || 'nothing'}`);
      return false;
    }).catch((e) => {
      throw new Error(`${e.message}; received: ${hex(this.rx) || 'nothing'}`);
    });
    const at = this.rx.indexOf(expected);
    this.rx = this.rx.subarray(at + expected.length);
  }

  async login() {
    const serial = this.nextSerial();
    const login = frame(0x01, imeiBcd(this.imei), serial);
    assert.equal(login.length, 18);
    assert.equal(hex(login.subarray(0, 4)), '78 78 0d 01');
    this.write(login);
    const ack = await this.readExactly(10, 'login ACK');
    const expected = frame(0x01, Buffer.alloc(0), serial);  // 78 78 05 01 SS SS CC CC 0D 0A
    assert.equal(hex(ack), hex(expected), `login ACK of ${this.imei}`);
  }

  sendLocation(pos) {
    this.write(frame(0x12, locationContent(pos), this.nextSerial()));
    this.sent.push(pos);
  }

  /** Heartbeat; its ACK means everything sent before it on this connection is stored. */
  async heartbeat() {
    const serial = this.nextSerial();
    // info: GPS on + charging; voltage level 6; GSM 4; no alarm; English
    const hb = frame(0x13, Buffer.from([0x44, 0x06, 0x04, 0x00, 0x02]), serial);
    assert.equal(hex(hb.subarray(0, 4)), '78 78 0a 13');
    this.write(hb);
    await this.waitForBytes(frame(0x13, Buffer.alloc(0), serial), 'heartbeat ACK');
  }

  close() {
    if (this.sock) this.sock.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// The test

const DEVICE_1 = '864717003283581';
const DEVICE_2 = '359339075005244';

describe('gt06 web map', () => {
  let tmp;
  let logPath;
  let server;
  let serverExit = null;
  let httpBase;
  let tcpHost;
  let tcpPort;
  let context;
  let page;
  const pageErrors = [];
  const trackers = [];
  let failed = false;

  // Wraps a test body so that `after` knows whether to print the server's log.
  const step = (fn) => async (t) => {
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      throw e;
    }
  };

  before(async () => {
    try {
      const bin = process.env.GT06_BIN;
      if (!bin) {
        throw new Error('GT06_BIN is not set: run as `GT06_BIN=/path/to/gt06 node --test map.test.mjs` ' +
          '(e.g. GT06_BIN=target/debug/gt06 after `cargo build`)');
      }
      const binPath = path.resolve(bin);
      try {
        fs.accessSync(binPath, fs.constants.X_OK);
      } catch {
        throw new Error(`GT06_BIN=${bin} is not an executable file`);
      }
      const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
      try {
        fs.accessSync(chromiumPath, fs.constants.X_OK);
      } catch {
        throw new Error(`Chromium not found at ${chromiumPath} (apt-get install chromium, or set CHROMIUM)`);
      }

      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gt06-browser-'));
      const dataDir = path.join(tmp, 'data');
      fs.mkdirSync(dataDir);
      logPath = path.join(tmp, 'server.log');
      const logFd = fs.openSync(logPath, 'a');
      server = spawn(binPath, [
        'serve', '--data-dir', dataDir, '--tcp-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0',
      ], { stdio: ['ignore', logFd, logFd] });
      fs.closeSync(logFd);
      server.on('exit', (code, signal) => { serverExit = { code, signal }; });
      server.on('error', (e) => { serverExit = { error: e }; });

      const portsFile = path.join(dataDir, 'ports.json');
      const ports = await waitUntil(`${portsFile} (server start)`, 15_000, () => {
        if (serverExit) {
          const how = serverExit.error ? serverExit.error.message
            : serverExit.signal ? `signal ${serverExit.signal}` : `exit code ${serverExit.code}`;
          throw new Error(`gt06 serve stopped before writing ports.json (${how}); see the server log in this output`);
        }
        if (!fs.existsSync(portsFile)) return null;
        let p;
        try {
          p = JSON.parse(fs.readFileSync(portsFile, 'utf8'));
        } catch {
          return null;  // half-written: read it again
        }
        return p && typeof p.tcp === 'string' && typeof p.http === 'string' ? p : null;
      });
      const http = ports.http.match(/^(.*):(\d+)$/);
      const tcp = ports.tcp.match(/^(.*):(\d+)$/);
      assert.ok(http && tcp, `ports.json has host:port values: ${JSON.stringify(ports)}`);
      httpBase = `http://${http[1]}:${http[2]}`;
      tcpHost = tcp[1];
      tcpPort = Number(tcp[2]);

      context = await chromium.launchPersistentContext(path.join(tmp, 'chromium-profile'), {
        executablePath: chromiumPath,
        headless: true,
        timeout: 20_000,
        viewport: { width: 1280, height: 800 },
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync',
          '--disable-default-apps'],
      });
      context.setDefaultTimeout(UI_WAIT_MS);
      page = context.pages()[0] || (await context.newPage());
      page.on('pageerror', (err) => pageErrors.push(err.message));
    } catch (e) {
      failed = true;
      throw e;
    }
  }, { timeout: STEP_TIMEOUT_MS + 10_000 });

  after(async () => {
    if (failed && page) {
      const shot = path.join(artifactsDir(), 'map-failure.png');
      await page.screenshot({ path: shot, timeout: 5_000 }).then(
        () => console.log(`# screenshot of the failure: ${shot}`), () => {});
    }
    for (const t of trackers) t.close();
    if (context) await bounded(context.close(), 10_000);
    if (server && !serverExit) {
      server.kill('SIGTERM');
      await waitUntil('gt06 to stop after SIGTERM', 5_000, () => serverExit).catch(() => {
        server.kill('SIGKILL');
      });
      await waitUntil('gt06 to die after SIGKILL', 5_000, () => serverExit).catch(() => {});
    }
    if (failed && logPath && fs.existsSync(logPath)) {
      console.log(`# ---- gt06 server log (${logPath}) ----`);
      console.log(fs.readFileSync(logPath, 'utf8').split('\n').slice(-400).join('\n'));
      console.log('# ---- end of server log ----');
    }
    if (tmp && !failed) fs.rmSync(tmp, { recursive: true, force: true });
    else if (tmp) console.log(`# temp dir kept for inspection: ${tmp}`);
  }, { timeout: STEP_TIMEOUT_MS });

  test('the CRC and frames this test builds match the protocol document', step(() => {
    assert.equal(crc16x25(Buffer.from('123456789')), 0x906e);
    assert.equal(hex(frame(0x01, Buffer.alloc(0), 0x0005)), '78 78 05 01 00 05 9f f8 0d 0a');
    assert.equal(hex(frame(0x13, Buffer.alloc(0), 0x0100)), '78 78 05 13 01 00 e1 a0 0d 0a');
    assert.equal(hex(frame(0x01, imeiBcd('864717003283581'), 9)),
      '78 78 0d 01 08 64 71 70 03 28 35 81 00 09 3f 04 0d 0a');
    const vector144 = frame(0x12, locationContent({
      time: new Date(Date.UTC(2015, 9, 20, 14, 21, 11)), lat: 54.945347, lon: 24.017622, speed: 0, course: 0,
    }), 3);
    assert.equal(vector144.length, 36);
    assert.equal(hex(vector144.subarray(0, 11)), '78 78 1f 12 0f 0a 14 0e 15 0b c5');
  }));

  test('two trackers log in and send their positions', { timeout: STEP_TIMEOUT_MS }, step(async () => {
    const now = Date.now();
    const at = (minutesAgo) => new Date(Math.floor((now - minutesAgo * 60_000) / 1000) * 1000);
    const t1 = new Tracker(DEVICE_1);
    const t2 = new Tracker(DEVICE_2);
    trackers.push(t1, t2);
    await t1.connect(tcpHost, tcpPort);
    await t2.connect(tcpHost, tcpPort);
    await t1.login();
    await t2.login();
    // Device 1 drives north-east from Vilnius, device 2 north from Kaunas, one fix a minute.
    for (let i = 0; i < 5; i++) {
      t1.sendLocation({ time: at(12 - i), lat: 54.6872 + 0.001 * i, lon: 25.2797 + 0.0015 * i, speed: 30 + i, course: 45 });
    }
    for (let i = 0; i < 4; i++) {
      t2.sendLocation({ time: at(11 - i), lat: 54.8985 + 0.0012 * i, lon: 23.9036, speed: 20, course: 0 });
    }
    await t1.heartbeat();
    await t2.heartbeat();
  }));

  test('the map shows a marker per device and the list shows both', { timeout: STEP_TIMEOUT_MS }, step(async () => {
    await page.goto(httpBase + '/', { waitUntil: 'domcontentloaded', timeout: UI_WAIT_MS });
    for (const imei of [DEVICE_1, DEVICE_2]) {
      await page.locator(`img.leaflet-marker-icon[title="${imei}"]`).waitFor({ state: 'visible', timeout: UI_WAIT_MS });
    }
    await page.locator(`#devices li[data-imei="${DEVICE_2}"]`).waitFor({ state: 'visible', timeout: UI_WAIT_MS });
    const listed = await page.$$eval('#devices li[data-imei]', (lis) => lis.map((li) => li.getAttribute('data-imei')).sort());
    assert.deepEqual(listed, [DEVICE_1, DEVICE_2].sort(), 'the device list holds exactly the two devices');
    for (const imei of [DEVICE_1, DEVICE_2]) {
      assert.equal(await page.locator(`#devices li[data-imei="${imei}"] .dot-online`).count(), 1,
        `${imei} is connected, so the list shows it online`);
    }

    // Leaflet's marker image comes from our server and really loaded.
    const icon = await waitUntil('the marker image to load', UI_WAIT_MS, () =>
      page.$eval(`img.leaflet-marker-icon[title="${DEVICE_1}"]`, (img) =>
        (img.complete && img.naturalWidth > 0 ? { src: img.src, width: img.naturalWidth } : null)).catch(() => null));
    assert.ok(icon.src.startsWith(httpBase + '/vendor/leaflet/images/'), `marker icon served by gt06: ${icon.src}`);
    assert.ok(icon.width > 0);

    assert.equal(await page.locator('#banner').isVisible(), false,
      `no error banner, but it says: ${await page.locator('#banner').textContent()}`);
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  }));

  test('a new position moves the marker without a reload', { timeout: STEP_TIMEOUT_MS }, step(async () => {
    const markerLatLng = (imei) => page.evaluate((i) => {
      const m = window.gt06 && window.gt06.markers.get(i);
      if (!m) return null;
      const ll = m.getLatLng();
      return [ll.lat, ll.lng];
    }, imei);
    const before = await markerLatLng(DEVICE_1);
    const last = trackers[0].sent[trackers[0].sent.length - 1];
    assert.ok(before, 'device 1 has a marker');
    assert.ok(Math.abs(before[0] - last.lat) < 1e-4 && Math.abs(before[1] - last.lon) < 1e-4,
      `marker at the last position sent: ${before} vs ${[last.lat, last.lon]}`);
    const pixelBefore = await page.locator(`img.leaflet-marker-icon[title="${DEVICE_1}"]`).evaluate((img) => img.style.transform);
    await page.evaluate(() => { window.__gt06NoReload = true; });

    // Far away (Riga), newer than everything else.
    const far = { time: new Date(Math.floor((Date.now() - 60_000) / 1000) * 1000), lat: 56.9496, lon: 24.1052, speed: 80, course: 350 };
    trackers[0].sendLocation(far);
    await trackers[0].heartbeat();

    await waitUntil('the marker of device 1 to move to the new position', UI_WAIT_MS, async () => {
      const ll = await markerLatLng(DEVICE_1);
      return ll && Math.abs(ll[0] - far.lat) < 1e-4 && Math.abs(ll[1] - far.lon) < 1e-4;
    });
    const pixelAfter = await page.locator(`img.leaflet-marker-icon[title="${DEVICE_1}"]`).evaluate((img) => img.style.transform);
    assert.notEqual(pixelAfter, pixelBefore, 'the marker moved on screen');
    assert.equal(await page.evaluate(() => window.__gt06NoReload), true, 'the page did not reload');
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  }));

  test('clicking a device shows its track with every point sent', { timeout: STEP_TIMEOUT_MS }, step(async () => {
    const expected = trackers[0].sent.length;  // 5 + the far one
    await page.locator(`#devices li[data-imei="${DEVICE_1}"]`).click({ timeout: UI_WAIT_MS });
    await page.locator('path.track').waitFor({ state: 'attached', timeout: UI_WAIT_MS });
    await waitUntil(`#track-count to show ${expected}`, UI_WAIT_MS, async () => {
      const banner = page.locator('#banner');
      if (await banner.isVisible()) throw new Error(`error banner: ${await banner.textContent()}`);
      return (await page.locator('#track-count').textContent()).trim() === String(expected);
    }).catch(async (e) => {
      throw new Error(`${e.message}; #track-count says "${await page.locator('#track-count').textContent()}"`);
    });
    const d = await page.locator('path.track').getAttribute('d');
    assert.ok(d && d.length > 10, `the track polyline has a path: ${d}`);
    const li = page.locator(`#devices li[data-imei="${DEVICE_1}"]`);
    assert.match(await li.getAttribute('class'), /\bselected\b/, 'device 1 is selected in the list');

    await sleep(1000);  // let the zoom animation that fits the track finish
    const shot = path.join(artifactsDir(), 'map.png');
    await page.screenshot({ path: shot, timeout: 10_000 });
    console.log(`# screenshot: ${shot}`);
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  }));
});

// $GT06_ARTIFACTS, or else a temp dir of its own that outlives the test's (removed) temp dir.
let ownArtifacts = null;
function artifactsDir() {
  if (process.env.GT06_ARTIFACTS) {
    fs.mkdirSync(process.env.GT06_ARTIFACTS, { recursive: true });
    return process.env.GT06_ARTIFACTS;
  }
  if (!ownArtifacts) ownArtifacts = fs.mkdtempSync(path.join(os.tmpdir(), 'gt06-browser-artifacts-'));
  return ownArtifacts;
}
