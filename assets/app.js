// gt06 web map: device list, live markers and tracks.
//
// Plain script, no build step. Talks only to this server's JSON API (relative URLs), so the
// page works behind a reverse proxy under any path. Map tiles come from OpenStreetMap; when
// they cannot load (offline appliance) markers, list and tracks still work.
(function () {
  'use strict';

  var POLL_MS = 3000;
  var FETCH_TIMEOUT_MS = 10000;
  var TRACK_LIMIT = 10000;
  var TRACK_MAX_PAGES = 20;
  var DEFAULT_RANGE_S = 24 * 3600;
  var NARROW_QUERY = '(max-width: 720px)';

  function $(id) { return document.getElementById(id); }

  var els = {
    banner: $('banner'),
    bannerList: $('banner-list'),
    bannerClose: $('banner-close'),
    summary: $('summary'),
    panelToggle: $('panel-toggle'),
    panelBody: $('panel-body'),
    filter: $('filter'),
    devices: $('devices'),
    devicesEmpty: $('devices-empty'),
    trackPanel: $('track-panel'),
    trackDevice: $('track-device'),
    trackClose: $('track-close'),
    trackForm: $('track-form'),
    trackFrom: $('track-from'),
    trackTo: $('track-to'),
    trackCount: $('track-count'),
    trackCountUnit: $('track-count-unit'),
    trackSpan: $('track-span'),
    exportGpx: $('export-gpx'),
    exportGeojson: $('export-geojson'),
    exportCsv: $('export-csv'),
    quickButtons: Array.prototype.slice.call(document.querySelectorAll('#track-form [data-range]'))
  };

  // ---------------------------------------------------------------------------------------
  // Error banner. Each source (poll, track, …) holds at most one message; a later success of
  // the same source clears it, so a server that comes back makes the banner go away.

  var errors = new Map();

  function showError(source, message) {
    errors.set(source, message);
    renderBanner();
  }

  function clearError(source) {
    if (errors.delete(source)) renderBanner();
  }

  function renderBanner() {
    els.bannerList.textContent = '';
    errors.forEach(function (message) {
      var li = document.createElement('li');
      li.textContent = message;
      els.bannerList.appendChild(li);
    });
    els.banner.hidden = errors.size === 0;
  }

  els.bannerClose.addEventListener('click', function () {
    errors.clear();
    renderBanner();
  });

  window.addEventListener('error', function (ev) {
    showError('script', 'Something went wrong in this page: ' + (ev.message || 'unknown error'));
  });
  window.addEventListener('unhandledrejection', function (ev) {
    var reason = ev.reason && ev.reason.message ? ev.reason.message : String(ev.reason);
    showError('script', 'Something went wrong in this page: ' + reason);
  });

  // ---------------------------------------------------------------------------------------
  // HTTP

  function ApiError(message, status, code) {
    var err = new Error(message);
    err.name = 'ApiError';
    err.status = status;
    err.code = code;
    return err;
  }

  // GET a JSON document. Rejects with a readable message for network failures, timeouts,
  // non-2xx answers (using the API's {"error","code"} body when there is one) and non-JSON.
  function fetchJSON(url) {
    var ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = setTimeout(function () { if (ctrl) ctrl.abort(); }, FETCH_TIMEOUT_MS);
    var status = 0;
    var statusText = '';
    return fetch(url, {
      headers: { Accept: 'application/json' },
      credentials: 'same-origin',
      cache: 'no-store',
      signal: ctrl ? ctrl.signal : undefined
    }).then(function (res) {
      status = res.status;
      statusText = res.statusText;
      return res.text();
    }).then(function (text) {
      clearTimeout(timer);
      var body = null;
      try { body = text ? JSON.parse(text) : null; } catch (e) { body = undefined; }
      if (status < 200 || status > 299) {
        var human = body && typeof body.error === 'string' ? body.error : null;
        var code = body && typeof body.code === 'string' ? body.code : null;
        var msg = human || ('HTTP ' + status + (statusText ? ' ' + statusText : ''));
        if (human) msg += ' (HTTP ' + status + (code ? ', ' + code : '') + ')';
        throw ApiError(msg, status, code);
      }
      if (body === undefined || body === null) {
        throw ApiError('The server sent an answer that is not JSON (' + url.split('?')[0] + ')',
          status, 'bad_response');
      }
      return body;
    }, function (err) {
      clearTimeout(timer);
      if (err && err.name === 'ApiError') throw err;
      if (err && err.name === 'AbortError') {
        throw ApiError('The server did not answer within ' + FETCH_TIMEOUT_MS / 1000 + ' s', 0, 'timeout');
      }
      throw ApiError('Cannot reach the server (' + (err && err.message ? err.message : 'network error') + ')',
        0, 'network');
    });
  }

  // RFC 3339 for query strings. ':' is legal in a query, so keep it readable and safe for
  // servers that do not percent-decode.
  function qtime(date) {
    return encodeURIComponent(date.toISOString()).replace(/%3A/gi, ':');
  }

  function devicePath(imei) {
    return 'api/devices/' + encodeURIComponent(imei);
  }

  // ---------------------------------------------------------------------------------------
  // Formatting

  function escapeHtml(value) {
    return String(value).replace(/[&<>"']/g, function (c) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
    });
  }

  function parseTime(value) {
    if (typeof value !== 'string') return NaN;
    return Date.parse(value);
  }

  function relativeTime(ms, now) {
    if (!Number.isFinite(ms)) return 'never';
    var diff = Math.round((now - ms) / 1000);
    if (diff < -5) return 'in ' + durationText(-diff * 1000);
    if (diff < 1) return 'just now';
    if (diff < 60) return diff + ' s ago';
    if (diff < 3600) return Math.floor(diff / 60) + ' min ago';
    if (diff < 86400) return Math.floor(diff / 3600) + ' h ago';
    if (diff < 7 * 86400) return Math.floor(diff / 86400) + ' d ago';
    return new Date(ms).toLocaleDateString();
  }

  function durationText(ms) {
    var s = Math.round(ms / 1000);
    if (s < 60) return s + ' s';
    var m = Math.floor(s / 60);
    if (m < 60) return m + ' min' + (s % 60 ? ' ' + (s % 60) + ' s' : '');
    var h = Math.floor(m / 60);
    if (h < 48) return h + ' h' + (m % 60 ? ' ' + (m % 60) + ' min' : '');
    var d = Math.floor(h / 24);
    return d + ' d' + (h % 24 ? ' ' + (h % 24) + ' h' : '');
  }

  function dateTimeText(ms) {
    if (!Number.isFinite(ms)) return '—';
    return new Date(ms).toLocaleString([], {
      year: 'numeric', month: 'short', day: 'numeric',
      hour: '2-digit', minute: '2-digit', second: '2-digit'
    });
  }

  function speedText(p) {
    if (!p || typeof p.speed_kmh !== 'number') return '—';
    return Math.round(p.speed_kmh) + ' km/h';
  }

  var COMPASS = ['N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW'];
  function courseText(c) {
    if (typeof c !== 'number') return '—';
    return Math.round(c) + '° ' + COMPASS[Math.round((((c % 360) + 360) % 360) / 45) % 8];
  }

  function humanKey(key) {
    var special = {
      acc: 'ACC', gsm_signal: 'GSM signal', lbs: 'Cell (LBS)', odometer_m: 'Odometer',
      battery_percent: 'Battery', type_id: 'Type ID', login_tz_offset_min: 'Login time zone',
      power_v: 'External power', battery_v: 'Battery voltage', temperature_c: 'Temperature',
      driver_id: 'Driver ID',
      invalid_reason: 'Why invalid', reupload: 'Re-uploaded',
      mcc: 'MCC', mnc: 'MNC', lac: 'LAC', imsi: 'IMSI', iccid: 'ICCID'
    };
    if (special[key]) return special[key];
    var s = String(key).replace(/_/g, ' ');
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  function valueText(key, value) {
    if (value === null || value === undefined) return '—';
    if (typeof value === 'boolean') {
      if (key === 'acc') return value ? 'on' : 'off';
      return value ? 'yes' : 'no';
    }
    if (typeof value === 'number') {
      // Units from the field name's suffix (power_v, temperature_c, battery_percent, …).
      var unit = /_v$/.test(key) ? ' V' : /_c$/.test(key) ? ' °C' : /_percent$/.test(key) ? ' %'
        : /_kmh$/.test(key) ? ' km/h' : '';
      if (unit) return value.toLocaleString([], { maximumFractionDigits: 2 }) + unit;
    }
    if (key === 'login_tz_offset_min' && typeof value === 'number') {
      var a = Math.abs(value);
      return 'UTC' + (value < 0 ? '−' : '+') + pad2(Math.floor(a / 60)) + ':' + pad2(a % 60);
    }
    if (typeof value === 'string' && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/.test(value)) {
      return dateTimeText(Date.parse(value));
    }
    if (key === 'odometer_m' && typeof value === 'number') {
      return (value / 1000).toLocaleString([], { maximumFractionDigits: 1 }) + ' km';
    }
    if (Array.isArray(value)) {
      return value.map(function (v) { return valueText('', v); }).join(', ');
    }
    if (typeof value === 'object') {
      return Object.keys(value).map(function (k) {
        return humanKey(k) + ' ' + valueText(k, value[k]);
      }).join(' · ');
    }
    return String(value);
  }

  function label(d) {
    return d.name ? String(d.name) : d.imei;
  }

  function hasPosition(d) {
    // 0,0 is what a tracker without any fix sends, not a place.
    return !!(d && d.position && Number.isFinite(d.position.lat) && Number.isFinite(d.position.lon) &&
      !(d.position.lat === 0 && d.position.lon === 0));
  }

  var STANDARD_POSITION_KEYS = ['time', 'lat', 'lon', 'speed_kmh', 'course', 'satellites', 'valid', 'received'];

  function popupHtml(d, now) {
    var p = d.position;
    var t = parseTime(p.time);
    var rows = [];
    function row(k, v) { rows.push('<tr><th scope="row">' + escapeHtml(k) + '</th><td>' + escapeHtml(v) + '</td></tr>'); }
    if (d.name) row('IMEI', d.imei);
    if (d.model) row('Model', d.model);
    row('State', d.online ? 'online' : 'offline');
    row('Time', dateTimeText(t) + ' (' + relativeTime(t, now) + ')');
    row('Position', p.lat.toFixed(6) + ', ' + p.lon.toFixed(6));
    row('Speed', speedText(p));
    row('Course', courseText(p.course));
    row('Satellites', p.satellites === undefined ? '—' : String(p.satellites));
    row('Valid fix', p.valid === undefined ? '—' : (p.valid ? 'yes' : 'no'));
    if (p.received) row('Received', dateTimeText(parseTime(p.received)));
    Object.keys(p).forEach(function (k) {
      if (STANDARD_POSITION_KEYS.indexOf(k) === -1) row(humanKey(k), valueText(k, p[k]));
    });
    var statusRows = '';
    if (d.status && typeof d.status === 'object' && Object.keys(d.status).length) {
      var before = rows.length;
      Object.keys(d.status).forEach(function (k) {
        row(k === 'time' ? 'Reported' : humanKey(k), valueText(k, d.status[k]));
      });
      statusRows = '<tr><th colspan="2" class="popup-section">Status</th></tr>' + rows.splice(before).join('');
    }
    return '<div class="popup"><h3>' + escapeHtml(label(d)) + '</h3>' +
      '<table>' + rows.join('') + statusRows + '</table></div>';
  }

  // datetime-local values are in the browser's local time zone.
  function pad2(n) { return (n < 10 ? '0' : '') + n; }
  function toLocalInput(date) {
    return date.getFullYear() + '-' + pad2(date.getMonth() + 1) + '-' + pad2(date.getDate()) +
      'T' + pad2(date.getHours()) + ':' + pad2(date.getMinutes());
  }
  function fromLocalInput(value) {
    if (!value) return null;
    var d = new Date(value);
    return isNaN(d.getTime()) ? null : d;
  }
  // The end of the current minute: a range ending "now" must include what just arrived
  // (`to` is exclusive) and still fit a minute-precision datetime-local field.
  function endOfThisMinute() {
    return new Date(Math.ceil((Date.now() + 1) / 60000) * 60000);
  }

  // ---------------------------------------------------------------------------------------
  // Map

  var map = null;
  if (window.L) {
    L.Icon.Default.imagePath = 'vendor/leaflet/images/';
    map = L.map('map', { worldCopyJump: true, zoomSnap: 0.5 }).setView([25, 10], 2);
    var tiles = L.tileLayer('https://tile.openstreetmap.org/{z}/{x}/{y}.png', {
      maxZoom: 19,
      attribution: '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
    }).addTo(map);
    L.control.scale({ imperial: false }).addTo(map);

    // A quiet note, not an error: an appliance on a closed network has no tiles, and the
    // markers and tracks are still right.
    var TileNote = L.Control.extend({
      options: { position: 'bottomleft' },
      onAdd: function () {
        var div = L.DomUtil.create('div', 'map-note');
        div.textContent = 'Map background unavailable (offline?) — positions are still shown.';
        div.hidden = true;
        return div;
      }
    });
    var tileNote = new TileNote().addTo(map);
    var tileLoaded = false;
    var tileErrors = 0;
    tiles.on('tileload', function () {
      tileLoaded = true;
      tileNote.getContainer().hidden = true;
    });
    tiles.on('tileerror', function () {
      tileErrors += 1;
      if (!tileLoaded && tileErrors >= 2) tileNote.getContainer().hidden = false;
    });

    if (typeof ResizeObserver === 'function') {
      new ResizeObserver(function () { map.invalidateSize(); }).observe($('map'));
    }
  } else {
    showError('leaflet', 'The map library (vendor/leaflet/leaflet.js) did not load; the device list still works.');
  }

  // ---------------------------------------------------------------------------------------
  // State

  var devices = new Map();   // imei -> Device, from the latest poll
  var markers = new Map();   // imei -> L.Marker
  var items = new Map();     // imei -> { li, button, dot, state, name, sub, time, speed }
  var selectedImei = null;
  var fitted = false;        // the map fits all devices once, then keeps the user's view
  var lastPollOk = 0;
  var rangePreset = DEFAULT_RANGE_S;  // seconds, or null when the user typed a custom range
  var track = null;          // { imei, from, to, positions, line, start, end, token, busy }
  var trackToken = 0;

  // For tests and the curious: read-only handles on the map and its markers.
  window.gt06 = { map: map, markers: markers, devices: devices };

  function filterText() {
    return els.filter.value.trim().toLowerCase();
  }

  function matchesFilter(d, f) {
    if (!f) return true;
    return d.imei.toLowerCase().indexOf(f) !== -1 ||
      (d.name ? String(d.name).toLowerCase().indexOf(f) !== -1 : false);
  }

  // ---------------------------------------------------------------------------------------
  // Device list

  function makeItem(imei) {
    var li = document.createElement('li');
    li.className = 'device';
    li.setAttribute('data-imei', imei);
    var button = document.createElement('button');
    button.type = 'button';
    button.className = 'device-button';
    button.setAttribute('aria-pressed', 'false');
    var dot = document.createElement('span');
    dot.className = 'dot';
    dot.setAttribute('aria-hidden', 'true');
    var main = document.createElement('span');
    main.className = 'device-main';
    var name = document.createElement('span');
    name.className = 'device-name';
    var sub = document.createElement('span');
    sub.className = 'device-sub';
    main.appendChild(name);
    main.appendChild(sub);
    var meta = document.createElement('span');
    meta.className = 'device-meta';
    var state = document.createElement('span');
    state.className = 'sr-only';
    var time = document.createElement('span');
    time.className = 'device-time';
    var speed = document.createElement('span');
    speed.className = 'device-speed';
    meta.appendChild(state);
    meta.appendChild(time);
    meta.appendChild(speed);
    button.appendChild(dot);
    button.appendChild(main);
    button.appendChild(meta);
    li.appendChild(button);
    var item = { li: li, button: button, dot: dot, state: state, name: name, sub: sub, time: time, speed: speed };
    items.set(imei, item);
    return item;
  }

  function fillItem(item, d, now) {
    item.name.textContent = label(d);
    item.sub.textContent = d.name ? d.imei : '';
    item.sub.hidden = !item.sub.textContent;
    item.dot.className = 'dot ' + (d.online ? 'dot-online' : 'dot-offline');
    item.state.textContent = d.online ? 'online, ' : 'offline, ';
    item.li.classList.toggle('offline', !d.online);
    var seen = parseTime(d.last_seen);
    item.time.setAttribute('data-time', Number.isFinite(seen) ? String(seen) : '');
    item.time.textContent = relativeTime(seen, now);
    item.time.title = Number.isFinite(seen) ? 'Last seen ' + dateTimeText(seen) : 'Never seen';
    item.speed.textContent = hasPosition(d) ? speedText(d.position) : 'no position';
  }

  function renderList(now) {
    var f = filterText();
    var sorted = Array.from(devices.values()).sort(function (a, b) {
      var la = label(a).toLowerCase();
      var lb = label(b).toLowerCase();
      return la < lb ? -1 : la > lb ? 1 : (a.imei < b.imei ? -1 : a.imei > b.imei ? 1 : 0);
    });

    // Drop items of devices that are gone.
    items.forEach(function (item, imei) {
      if (!devices.has(imei)) {
        item.li.remove();
        items.delete(imei);
      }
    });

    var shown = 0;
    sorted.forEach(function (d, idx) {
      var item = items.get(d.imei) || makeItem(d.imei);
      fillItem(item, d, now);
      var visible = matchesFilter(d, f) || d.imei === selectedImei;
      item.li.hidden = !visible;
      if (visible) shown += 1;
      var selected = d.imei === selectedImei;
      item.li.classList.toggle('selected', selected);
      item.button.setAttribute('aria-pressed', selected ? 'true' : 'false');
      // Reorder only when needed, so a focused button keeps its focus.
      if (els.devices.children[idx] !== item.li) {
        els.devices.insertBefore(item.li, els.devices.children[idx] || null);
      }
    });

    if (devices.size === 0) {
      els.devicesEmpty.textContent = 'No devices yet. Point a GT06 tracker at this server\u2019s tracker port and it will appear here.';
      els.devicesEmpty.hidden = false;
    } else if (shown === 0) {
      els.devicesEmpty.textContent = 'No device matches \u201c' + els.filter.value.trim() + '\u201d.';
      els.devicesEmpty.hidden = false;
    } else {
      els.devicesEmpty.hidden = true;
    }
  }

  function renderSummary(now) {
    var total = devices.size;
    var online = 0;
    devices.forEach(function (d) { if (d.online) online += 1; });
    var text = total + (total === 1 ? ' device' : ' devices') + ' · ' + online + ' online';
    if (lastPollOk) {
      text += ' · updated ' + new Date(lastPollOk).toLocaleTimeString();
    }
    els.summary.textContent = text;
  }

  // Relative times tick every second without waiting for the next poll.
  setInterval(function () {
    var now = Date.now();
    items.forEach(function (item) {
      var v = item.time.getAttribute('data-time');
      item.time.textContent = relativeTime(v ? Number(v) : NaN, now);
    });
  }, 1000);

  els.devices.addEventListener('click', function (ev) {
    var li = ev.target.closest('li[data-imei]');
    if (!li) return;
    selectDevice(li.getAttribute('data-imei'), { fromList: true });
  });

  els.filter.addEventListener('input', function () {
    var now = Date.now();
    renderList(now);
    renderMarkers(now);
  });

  // ---------------------------------------------------------------------------------------
  // Markers

  function renderMarkers(now) {
    if (!map) return;
    var f = filterText();
    markers.forEach(function (m, imei) {
      var d = devices.get(imei);
      if (!d || !hasPosition(d)) {
        m.remove();
        markers.delete(imei);
      }
    });
    devices.forEach(function (d) {
      if (!hasPosition(d)) return;
      var ll = [d.position.lat, d.position.lon];
      var m = markers.get(d.imei);
      if (!m) {
        m = L.marker(ll, {
          title: d.imei,
          alt: 'Tracker ' + label(d),
          riseOnHover: true
        });
        m.bindPopup(popupHtml(d, now), { maxWidth: 340, autoPanPadding: [24, 24] });
        m.on('click', function () { selectDevice(d.imei, { fromMarker: true }); });
        markers.set(d.imei, m);
      } else {
        var cur = m.getLatLng();
        if (cur.lat !== ll[0] || cur.lng !== ll[1]) m.setLatLng(ll);
        m.setPopupContent(popupHtml(d, now));
      }
      var visible = matchesFilter(d, f) || d.imei === selectedImei;
      if (visible && !map.hasLayer(m)) m.addTo(map);
      if (!visible && map.hasLayer(m)) m.remove();
      var el = m.getElement();
      if (el) {
        el.classList.toggle('marker-offline', !d.online);
        el.classList.toggle('marker-selected', d.imei === selectedImei);
      }
      m.setZIndexOffset(d.imei === selectedImei ? 1000 : 0);
    });
  }

  function fitAll() {
    if (!map) return false;
    var pts = [];
    devices.forEach(function (d) {
      if (hasPosition(d)) pts.push([d.position.lat, d.position.lon]);
    });
    if (pts.length === 0) return false;
    if (pts.length === 1) {
      map.setView(pts[0], 15);
    } else {
      map.fitBounds(L.latLngBounds(pts), { padding: [48, 48], maxZoom: 16 });
    }
    return true;
  }

  // ---------------------------------------------------------------------------------------
  // Polling

  var pollTimer = null;
  var initialHash = readHashDevice();

  function poll() {
    clearTimeout(pollTimer);
    fetchJSON('api/devices').then(function (list) {
      if (!Array.isArray(list)) {
        throw ApiError('Unexpected answer from api/devices (not a list)', 200, 'bad_response');
      }
      var now = Date.now();
      devices.clear();
      list.forEach(function (d) {
        if (d && typeof d.imei === 'string') devices.set(d.imei, d);
      });
      lastPollOk = now;
      clearError('poll');
      els.summary.classList.remove('stale');
      renderList(now);
      renderMarkers(now);
      renderSummary(now);
      if (initialHash && devices.has(initialHash)) {
        var imei = initialHash;
        initialHash = null;
        fitted = true;  // the track will fit the map
        selectDevice(imei, {});
      }
      if (!fitted) fitted = fitAll();
      liveTrackUpdate();
    }).catch(function (err) {
      showError('poll', 'Could not refresh the devices: ' + err.message);
      els.summary.classList.add('stale');
      if (!lastPollOk) els.summary.textContent = 'Devices unavailable; retrying every ' + POLL_MS / 1000 + ' s';
    }).then(function () {
      pollTimer = setTimeout(poll, POLL_MS);
    });
  }

  // ---------------------------------------------------------------------------------------
  // Selection and tracks

  function readHashDevice() {
    var m = /^#device=([^&]+)$/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function setRangeInputs(from, to) {
    els.trackFrom.value = toLocalInput(from);
    els.trackTo.value = toLocalInput(to);
  }

  function markPreset() {
    els.quickButtons.forEach(function (b) {
      b.setAttribute('aria-pressed', Number(b.getAttribute('data-range')) === rangePreset ? 'true' : 'false');
    });
  }

  function currentRange() {
    if (rangePreset !== null) {
      var to = endOfThisMinute();
      var from = new Date(to.getTime() - rangePreset * 1000);
      setRangeInputs(from, to);
      return { from: from, to: to };
    }
    var f = fromLocalInput(els.trackFrom.value);
    var t = fromLocalInput(els.trackTo.value);
    if (!f || !t) {
      showError('track', 'Enter both the start and the end of the time range.');
      return null;
    }
    if (f >= t) {
      showError('track', 'The start of the time range must be before its end.');
      return null;
    }
    return { from: f, to: t };
  }

  function selectDevice(imei, opts) {
    if (!devices.has(imei)) return;
    selectedImei = imei;
    try { history.replaceState(null, '', '#device=' + encodeURIComponent(imei)); } catch (e) { /* file: URLs */ }
    var d = devices.get(imei);
    els.trackDevice.textContent = label(d);
    els.trackPanel.hidden = false;
    var now = Date.now();
    renderList(now);
    renderMarkers(now);
    if (narrow && narrow.matches && !els.panelBody.hidden && els.trackPanel.scrollIntoView) {
      els.trackPanel.scrollIntoView({ block: 'nearest' });
    }
    var range = currentRange();
    if (range) loadTrack(imei, range.from, range.to);
  }

  function deselect() {
    selectedImei = null;
    clearTrack();
    els.trackPanel.hidden = true;
    try { history.replaceState(null, '', location.pathname + location.search); } catch (e) { /* ignore */ }
    var now = Date.now();
    renderList(now);
    renderMarkers(now);
  }

  function clearTrack() {
    trackToken += 1;
    if (track && map) {
      if (track.line) track.line.remove();
      if (track.start) track.start.remove();
      if (track.end) track.end.remove();
    }
    track = null;
    clearError('track');
  }

  // Fetch every page of a range: follows `next` while it is non-null, at most TRACK_MAX_PAGES.
  function fetchPositions(imei, from, to, token) {
    var all = [];
    var pages = 0;
    function page(cursor) {
      var url = devicePath(imei) + '/positions?from=' + qtime(cursor) + '&to=' + qtime(to) +
        '&limit=' + TRACK_LIMIT;
      return fetchJSON(url).then(function (body) {
        if (token !== trackToken) return null;
        if (!body || !Array.isArray(body.positions)) {
          throw ApiError('Unexpected answer from the positions API (no "positions" list)', 200, 'bad_response');
        }
        Array.prototype.push.apply(all, body.positions);
        pages += 1;
        var next = typeof body.next === 'string' ? new Date(body.next) : null;
        if (next && !isNaN(next.getTime()) && next > cursor && next < to) {
          if (pages >= TRACK_MAX_PAGES) return { positions: all, truncated: true };
          return page(next);
        }
        return { positions: all, truncated: false };
      });
    }
    return page(from);
  }

  function usable(p) {
    return p && Number.isFinite(p.lat) && Number.isFinite(p.lon) && !(p.lat === 0 && p.lon === 0);
  }

  function exportHref(imei, kind, from, to) {
    return devicePath(imei) + '/track.' + kind + '?from=' + qtime(from) + '&to=' + qtime(to);
  }

  function loadTrack(imei, from, to) {
    clearTrack();
    var token = trackToken;
    track = { imei: imei, from: from, to: to, positions: [], line: null, start: null, end: null, token: token, busy: true, truncated: false };
    els.trackCount.textContent = '…';
    els.trackCountUnit.textContent = 'points';
    els.trackSpan.textContent = 'Loading ' + dateTimeText(from.getTime()) + ' – ' + dateTimeText(to.getTime()) + '…';
    els.exportGpx.href = exportHref(imei, 'gpx', from, to);
    els.exportGeojson.href = exportHref(imei, 'geojson', from, to);
    els.exportCsv.href = exportHref(imei, 'csv', from, to);
    fetchPositions(imei, from, to, token).then(function (res) {
      if (!res || token !== trackToken) return;
      track.positions = res.positions;
      track.truncated = res.truncated;
      track.busy = false;
      drawTrack(true);
    }).catch(function (err) {
      if (token !== trackToken) return;
      track.busy = false;
      els.trackCount.textContent = '0';
      els.trackSpan.textContent = 'The track could not be loaded.';
      showError('track', 'Could not load the track of ' + imei + ': ' + err.message);
    });
  }

  function drawTrack(fit) {
    if (!track) return;
    clearError('track');
    var pts = track.positions.filter(usable).map(function (p) { return [p.lat, p.lon]; });
    var n = track.positions.length;
    els.trackCount.textContent = String(n);
    els.trackCountUnit.textContent = n === 1 ? 'point' : 'points';
    if (n === 0) {
      els.trackSpan.textContent = 'No positions between ' + dateTimeText(track.from.getTime()) +
        ' and ' + dateTimeText(track.to.getTime()) + '.';
    } else {
      var first = parseTime(track.positions[0].time);
      var last = parseTime(track.positions[n - 1].time);
      var invalid = track.positions.filter(function (p) { return p.valid === false; }).length;
      var sameDay = new Date(first).toDateString() === new Date(last).toDateString();
      var lastText = sameDay ? new Date(last).toLocaleTimeString() : dateTimeText(last);
      var text = dateTimeText(first) + ' – ' + lastText + ' (' + durationText(last - first) + ')';
      if (invalid) text += '; ' + invalid + ' without a GPS fix';
      if (track.truncated) text += '. Only the first ' + n + ' points are shown: choose a shorter range.';
      els.trackSpan.textContent = text;
    }
    if (!map) return;
    if (!track.line) {
      track.line = L.polyline(pts, { className: 'track', color: '#d6336c', weight: 4, opacity: 0.85 }).addTo(map);
    } else {
      track.line.setLatLngs(pts);
    }
    if (pts.length > 0) {
      if (!track.start) {
        track.start = L.circleMarker(pts[0], { className: 'track-start', radius: 6, color: '#fff', weight: 2, fillColor: '#2b8a3e', fillOpacity: 1 })
          .bindTooltip('Start').addTo(map);
      } else {
        track.start.setLatLng(pts[0]);
      }
      if (!track.end) {
        track.end = L.circleMarker(pts[pts.length - 1], { className: 'track-end', radius: 6, color: '#fff', weight: 2, fillColor: '#c92a2a', fillOpacity: 1 })
          .bindTooltip('End').addTo(map);
      } else {
        track.end.setLatLng(pts[pts.length - 1]);
      }
    }
    if (fit && pts.length > 0) {
      if (pts.length === 1) map.setView(pts[0], Math.max(map.getZoom(), 15));
      else map.fitBounds(track.line.getBounds(), { padding: [48, 48], maxZoom: 17 });
    }
  }

  // While a track of the selected device is shown and the device reports a newer position,
  // fetch just the new points and extend the line (without moving the user's view). A range
  // chosen with a quick button follows "now"; a custom range stops at its end.
  function liveTrackUpdate() {
    if (!track || track.busy || track.truncated || track.imei !== selectedImei) return;
    var d = devices.get(track.imei);
    if (!hasPosition(d)) return;
    var t = parseTime(d.position.time);
    var last = track.positions.length ? parseTime(track.positions[track.positions.length - 1].time) : track.from.getTime() - 1;
    if (!Number.isFinite(t) || t <= last) return;
    if (rangePreset !== null) {
      var newTo = endOfThisMinute();
      if (newTo > track.to) {
        track.to = newTo;
        els.trackTo.value = toLocalInput(newTo);
      }
    }
    if (t >= track.to.getTime()) return;
    var token = track.token;
    track.busy = true;
    fetchPositions(track.imei, new Date(last + 1), track.to, token).then(function (res) {
      if (!res || !track || token !== track.token) return;
      track.busy = false;
      var lastMs = last;
      res.positions.forEach(function (p) {
        var pt = parseTime(p.time);
        if (pt > lastMs) { track.positions.push(p); lastMs = pt; }
      });
      if (res.truncated) track.truncated = true;
      drawTrack(false);
    }).catch(function (err) {
      if (!track || token !== track.token) return;
      track.busy = false;
      showError('track', 'Could not extend the track of ' + track.imei + ': ' + err.message);
    });
  }

  els.quickButtons.forEach(function (b) {
    b.addEventListener('click', function () {
      rangePreset = Number(b.getAttribute('data-range'));
      markPreset();
      if (selectedImei) {
        var r = currentRange();
        if (r) loadTrack(selectedImei, r.from, r.to);
      }
    });
  });

  function customRange() {
    rangePreset = null;
    markPreset();
  }
  els.trackFrom.addEventListener('input', customRange);
  els.trackTo.addEventListener('input', customRange);

  els.trackForm.addEventListener('submit', function (ev) {
    ev.preventDefault();
    if (!selectedImei) return;
    var r = currentRange();
    if (r) loadTrack(selectedImei, r.from, r.to);
  });

  els.trackClose.addEventListener('click', deselect);
  document.addEventListener('keydown', function (ev) {
    if (ev.key === 'Escape' && selectedImei && !(map && map.getContainer().querySelector('.leaflet-popup'))) {
      deselect();
    }
  });

  // ---------------------------------------------------------------------------------------
  // Narrow screens: the panel sits above the map and can be folded away.

  var narrow = window.matchMedia ? window.matchMedia(NARROW_QUERY) : null;
  function setPanelOpen(open) {
    els.panelBody.hidden = !open;
    els.panelToggle.setAttribute('aria-expanded', open ? 'true' : 'false');
    els.panelToggle.textContent = open ? 'Hide list' : 'Show list';
    if (map) setTimeout(function () { map.invalidateSize(); }, 0);
  }
  els.panelToggle.addEventListener('click', function () {
    setPanelOpen(els.panelBody.hidden);
  });
  if (narrow) {
    var onNarrowChange = function () { if (!narrow.matches) setPanelOpen(true); };
    if (narrow.addEventListener) narrow.addEventListener('change', onNarrowChange);
    else if (narrow.addListener) narrow.addListener(onNarrowChange);
  }

  // ---------------------------------------------------------------------------------------
  // Start

  setRangeInputs(new Date(Date.now() - DEFAULT_RANGE_S * 1000), endOfThisMinute());
  markPreset();
  poll();
})();
