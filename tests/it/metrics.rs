//! `GET /metrics`: the frame counters say what became of what trackers sent; the output
//! is well-formed Prometheus text, and the shipped alert rules and dashboard use only names
//! it serves.

use crate::harness::*;
use gt06::protocol::{encode, Form};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The value of the series `name` exactly as written (labels included), if present.
fn series(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn bad_crc_unknown_type_and_location_are_counted_by_result_and_proto() {
    let g = Gt06::start();
    let mut d = g.logged_in("864717003283581", 1);
    let bad_crc = hex(&LOCATION_V144.replace("5f240d0a", "5f250d0a"));
    let unknown = encode::frame(Form::Short, 0xEE, &[1, 2, 3], 0x20);
    let unknown_again = encode::frame(Form::Short, 0xEE, &[4], 0x21);
    d.send(&bad_crc);
    // Unknown types are answered per §9 (short form: the generic ack) and stored nowhere.
    assert_eq!(d.send_expect(&unknown, 10), ack(0xEE, 0x20));
    assert_eq!(d.send_expect(&unknown_again, 10), ack(0xEE, 0x21));
    // Answers go out in order: once the location is acked, everything before it counted.
    assert_eq!(
        d.send_expect(&hex(LOCATION_V144), 10),
        hex("787805120003903f0d0a")
    );

    let (status, body, ctype) = g.get("/metrics");
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("# TYPE gt06_frames_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# HELP gt06_positions_stored_total "),
        "{text}"
    );
    let frames = |labels: &str| series(&text, &format!("gt06_frames_total{{{labels}}}"));
    assert_eq!(
        frames(r#"result="bad_crc",proto="0x12""#),
        Some(1),
        "{text}"
    );
    assert_eq!(
        frames(r#"result="unknown_type",proto="0xee""#),
        Some(2),
        "{text}"
    );
    assert_eq!(frames(r#"result="ok",proto="0x12""#), Some(1), "{text}");
    assert_eq!(frames(r#"result="ok",proto="0x01""#), Some(1), "{text}");
    assert_eq!(
        series(&text, "gt06_positions_stored_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(series(&text, "gt06_connections_total"), Some(1), "{text}");
    assert_eq!(series(&text, "gt06_connections_current"), Some(1), "{text}");

    // The unknown type is logged once for the connection, not once per frame.
    let log = g.wait_log("message type not decoded");
    assert_eq!(log.matches("message type not decoded").count(), 1, "{log}");
    // Nothing of the unknown frames was stored as a position.
    let (_, v) = g.get_json("/api/devices/864717003283581/positions");
    assert_eq!(v["positions"].as_array().map(Vec::len), Some(1));

    // A closed connection leaves the gauge, and its socket is closed in the background
    // (the server is idle here, so that happens at once).
    drop(d);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, body, _) = g.get("/metrics");
        let text = String::from_utf8_lossy(&body).into_owned();
        if series(&text, "gt06_connections_current") == Some(0)
            && series(&text, "gt06_connections_closing") == Some(0)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Checks Prometheus text format 0.0.4 the way a scraper reads it: every line a comment
/// (`# HELP` / `# TYPE`) or a well-formed sample; every sample under a TYPE declared
/// before it; each family's lines together; histogram buckets ascending in `le`,
/// cumulative, ending with `+Inf` equal to `_count`. Returns every sample and family name.
fn check_exposition(text: &str) -> Result<BTreeSet<String>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut names = BTreeSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    // (family, labels without le) -> [(le, value)]
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    for (no, line) in text.lines().enumerate() {
        let err = |m: &str| Err(format!("line {}: {m}: {line}", no + 1));
        if line.is_empty() {
            return err("empty line");
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let tail = parts.next().unwrap_or("");
            if !valid_name(name) {
                return err("bad metric name in comment");
            }
            match kw {
                "HELP" if !tail.is_empty() => {}
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail) {
                        return err("unknown type");
                    }
                    if types.insert(name.to_string(), tail.to_string()).is_some() {
                        return err("second TYPE for a family");
                    }
                    names.insert(name.to_string());
                }
                _ => return err("comment that is neither HELP nor TYPE"),
            }
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => return err("no value"),
        };
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            return err("value is not a number");
        }
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => match l.strip_suffix('}') {
                Some(l) => (n, l),
                None => return err("unclosed labels"),
            },
            None => (series, ""),
        };
        if !valid_name(name) {
            return err("bad metric name");
        }
        let mut pairs = Vec::new();
        if !labels.is_empty() {
            for pair in labels.split(',') {
                let Some((k, v)) = pair.split_once('=') else {
                    return err("label without =");
                };
                let inner = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                if !valid_name(k) || inner.is_none_or(|v| v.contains('"')) {
                    return err("bad label");
                }
                pairs.push((k.to_string(), inner.unwrap_or("").to_string()));
            }
        }
        names.insert(name.to_string());
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name)
            .to_string();
        if !types.contains_key(&family) {
            return err("sample without a TYPE before it");
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return err("family split in two groups");
            }
            if let Some(c) = current.take() {
                finished.insert(c);
            }
            current = Some(family.clone());
        }
        if types[&family] == "histogram" {
            let rest: Vec<String> = pairs
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let key = (family.clone(), rest.join(","));
            let v: f64 = value.parse().unwrap_or(f64::NAN);
            if name.ends_with("_bucket") {
                let Some((_, le)) = pairs.iter().find(|(k, _)| k == "le") else {
                    return err("bucket without le");
                };
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| format!("line {}: bad le", no + 1))?
                };
                buckets.entry(key).or_default().push((le, v));
            } else if name.ends_with("_count") {
                counts.insert(key, v);
            }
        }
    }
    for (key, bs) in &buckets {
        if bs.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
            return Err(format!(
                "{key:?}: buckets not ascending and cumulative: {bs:?}"
            ));
        }
        let last = bs.last().unwrap();
        if last.0 != f64::INFINITY || counts.get(key) != Some(&last.1) {
            return Err(format!("{key:?}: no +Inf bucket equal to _count"));
        }
    }
    Ok(names)
}

/// Metric names (gt06_* and process_*) a file mentions.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["gt06_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_')) && end > prefix.len()
            {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end.max(1)..];
        }
    }
    out
}

#[test]
fn metrics_parse_and_every_name_in_the_alert_rules_and_dashboard_exists() {
    let g = Gt06::start();
    let mut d = g.logged_in("864717003283581", 1);
    assert_eq!(
        d.send_expect(&hex(LOCATION_V144), 10),
        hex("787805120003903f0d0a")
    );
    drop(d);
    // Requests of a few routes, one unknown path, one IMEI that must not become a label.
    assert_eq!(g.get("/api/devices").0, 200);
    assert_eq!(g.get("/api/devices/864717003283581/positions").0, 200);
    assert_eq!(g.get("/api/nope").0, 404);
    assert_eq!(g.get("/health/ready").0, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let (status, body, _) = g.get("/metrics");
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        if series(&text, "gt06_connections_current") == Some(0) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let names = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    // The values say what happened.
    let v = |s: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(s)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {s} in\n{text}"))
    };
    assert_eq!(
        v("gt06_connections_closed_total{result=\"device_closed\"}"),
        1.0
    );
    assert_eq!(
        v("gt06_http_requests_total{route=\"Devices\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        v("gt06_http_requests_total{route=\"Positions\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        v("gt06_http_requests_total{route=\"Unmatched\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        v("gt06_http_request_duration_seconds_count{route=\"HealthReady\"}"),
        1.0
    );
    assert!(!text.contains("864717003283581"), "an IMEI became a label");
    // The login's answer does not wait for its commit, so the location may share it.
    assert!(
        v("gt06_store_batch_size_count") >= 1.0,
        "login and location commits"
    );
    assert!(v("gt06_store_flush_seconds_count") >= 1.0);
    assert!(v("gt06_last_position_age_seconds") < 60.0);
    assert!(v("gt06_disk_size_bytes") > 0.0);
    assert!(v("gt06_disk_free_bytes") > 0.0);
    assert!(v("gt06_store_bytes") > 0.0);
    assert_eq!(v("gt06_disk_low"), 0.0);
    assert_eq!(v("gt06_store_writes_refused_total{kind=\"position\"}"), 0.0);
    assert!(v("process_resident_memory_bytes") > 1e6);
    assert!(v("process_open_fds") >= 3.0);
    assert!(v("process_max_fds") >= v("process_open_fds"));
    assert!(v("process_start_time_seconds") > 1.6e9);
    assert!(v("gt06_host_memory_total_bytes") >= v("gt06_host_memory_available_bytes"));

    // Every name the shipped alert rules and dashboard use is served (`up` is
    // Prometheus's own).
    let root = env!("CARGO_MANIFEST_DIR");
    let rules =
        std::fs::read_to_string(format!("{root}/packaging/prometheus/gt06-alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/packaging/grafana/gt06-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let used: BTreeSet<String> = names_in(&rules)
        .into_iter()
        .chain(names_in(&exprs))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}\n{text}");
    // The rules file names the four alerts the README explains, each with a summary and
    // a description saying what to do.
    for alert in [
        "Gt06Down",
        "Gt06DiskAlmostFull",
        "Gt06RefusingPositions",
        "Gt06MemoryHigh",
        "Gt06NoPositions",
    ] {
        assert!(rules.contains(&format!("- alert: {alert}\n")), "{alert}");
        let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
        assert!(readme.contains(alert), "README does not explain {alert}");
    }
    assert_eq!(rules.matches("summary:").count(), 5);
    assert_eq!(rules.matches("description:").count(), 5);
    assert!(rules.contains("up{job=\"gt06\"}"));
}

#[test]
fn the_exposition_checker_catches_what_a_scraper_would_reject() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    assert!(check_exposition(ok).is_ok());
    for bad in [
        "a_total 1\n",                // no TYPE
        "# TYPE a gauge\na x\n",      // not a number
        "# TYPE a gauge\na{k=v} 1\n", // unquoted label
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",                          // no +Inf
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", // split family
    ] {
        assert!(check_exposition(bad).is_err(), "{bad}");
    }
    assert_eq!(
        names_in("rate(gt06_x_total[5m]) / process_open_fds, gt06_ and my_gt06_y"),
        ["gt06_x_total", "process_open_fds"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
