//! Settings: embedded defaults < `gt06.toml` < command-line flags.
//!
//! This room parses and validates configuration and names the offending key when it is
//! wrong. It never opens sockets or files other than the config file itself; `main.rs`
//! acts on what it returns. Every key here is documented, with its default, in
//! `gt06.toml.example`, and a test keeps the two in step.

use crate::ingest::device_time::TimeSetting;
use crate::ingest::{DeviceSetting, DeviceSettings};
use crate::protocol::{Imei, Model};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration problem, always tied to the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {problem}")]
    Syntax { path: PathBuf, problem: String },
    #[error("config key `{key}`: {problem}")]
    Key { key: String, problem: String },
}

impl ConfigError {
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_unreadable",
            ConfigError::Syntax { .. } => "config_syntax",
            ConfigError::Key { .. } => "config_key",
        }
    }

    fn key(key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Key {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}

/// The whole configuration. Field docs are the text of `gt06.toml.example`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the whole state (the sled store and `ports.json`).
    /// Default `./gt06-data`; the packaged service uses `/var/lib/gt06`.
    pub data_dir: PathBuf,
    pub tcp: TcpConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub protocol: ProtocolConfig,
    pub log: LogConfig,
    /// Per-device settings, keyed by IMEI (a quoted 15-digit string).
    pub devices: BTreeMap<String, DeviceConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Address the GT06 trackers connect to. Port 0 picks a free port.
    pub listen: String,
    /// Seconds without a byte from a tracker before its connection is closed. Trackers
    /// send a heartbeat every few minutes, so the default leaves room for two missed ones.
    pub idle_timeout_secs: u64,
    /// Seconds a reply may take to be written before the connection is dropped.
    pub write_timeout_secs: u64,
    /// Seconds a new connection has to complete its login before it is closed.
    pub login_timeout_secs: u64,
    /// Seconds a frame may take from its first byte to its last before the connection
    /// is closed, so nothing ever waits forever for the end of a frame.
    pub frame_timeout_secs: u64,
    /// Most tracker connections open at once; 0 means as many as the process's file
    /// descriptor limit allows (the limit minus a reserve for the store and HTTP). A
    /// larger value is lowered to that.
    pub max_connections: u64,
    /// Most tracker connections from one IP address; 0 turns the cap off. Large on
    /// purpose: behind carrier-grade NAT or an M2M APN many real trackers share one
    /// public address.
    pub max_connections_per_ip: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the web map, JSON API and health endpoints. Port 0 picks a free port.
    pub listen: String,
    /// Seconds a live-stream (`/api/live`) client may leave its stream unread before it
    /// is dropped.
    pub live_stall_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Largest number of records the writer applies in one group commit.
    pub max_batch: usize,
    /// Milliseconds between the starts of two group commits, at least (unless a full
    /// group is waiting): a few milliseconds of requests share one fsync.
    pub min_commit_interval_ms: u64,
    /// sled's page cache in MiB. sled 0.34 defaults to 1 GiB, a budget too large for the
    /// small VMs this runs on.
    pub cache_mb: u64,
    /// Positions held in memory (and in the journal) before they are sealed into
    /// compact blocks. Bounds memory and the replay time after a crash.
    pub checkpoint_positions: usize,
    /// Seconds after which unsealed positions are sealed even when few.
    pub checkpoint_interval_secs: u64,
    /// Days of positions to keep; 0 keeps everything. Whole blocks are dropped once
    /// their newest position is older (checked hourly).
    pub retention_days: u64,
    /// Free space (MiB) on the data directory's filesystem under which new positions and
    /// events are refused (the disk guard); 0 turns the guard off.
    pub min_free_mb: u64,
    /// The same as a percentage of the filesystem's size. The guard uses the smaller of
    /// the two limits, so a small volume is not "full" from the start; 100 makes
    /// `min_free_mb` alone decide, 0 turns the guard off.
    pub min_free_percent: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolConfig {
    /// Largest frame a tracker may declare, in bytes. A larger length means the stream
    /// lost sync (or is not GT06), and the connection is closed.
    pub max_frame_bytes: usize,
    /// `"strict"`: frames whose CRC does not match are dropped (the vendor's rule).
    /// `"lenient"`: such frames are decoded anyway (some cheap clones compute it wrong).
    pub crc: String,
    /// How fix times are read for devices without their own `time` setting: `"utc"`,
    /// `"login"` (the login's time-zone word), an offset like `"+05:30"`, or `"auto"`.
    pub device_time: String,
    /// Model of devices without their own `model` setting; `""` is the standard GT06
    /// layouts. See [`MODEL_NAMES`].
    pub device_model: String,
}

/// Settings of one device (`[devices."864717003283581"]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// How this device's fix times are read; same values as `protocol.device_time`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// This device's model (e.g. `"VL103"`); same values as `protocol.device_model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Log filter, e.g. `"info"` or `"gt06=debug"`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./gt06-data"),
            tcp: TcpConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            protocol: ProtocolConfig::default(),
            log: LogConfig::default(),
            devices: BTreeMap::new(),
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            listen: "0.0.0.0:5023".into(),
            idle_timeout_secs: 600,
            write_timeout_secs: 10,
            login_timeout_secs: 30,
            frame_timeout_secs: 20,
            max_connections: 0,
            max_connections_per_ip: 5000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".into(),
            live_stall_timeout_secs: 30,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_batch: 4096,
            min_commit_interval_ms: 2,
            cache_mb: crate::store::DEFAULT_CACHE_MB,
            checkpoint_positions: 2_000_000,
            checkpoint_interval_secs: 900,
            retention_days: 0,
            min_free_mb: 512,
            min_free_percent: 5,
        }
    }
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            max_frame_bytes: 2048,
            crc: "strict".into(),
            device_time: "utc".into(),
            device_model: String::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Flags that override the file (all optional: absent means "keep the file's value").
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub tcp_listen: Option<String>,
    pub http_listen: Option<String>,
}

/// Settings after validation, in the types the rest of the program uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub tcp_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub idle_timeout: std::time::Duration,
    pub write_timeout: std::time::Duration,
    pub login_timeout: std::time::Duration,
    pub frame_timeout: std::time::Duration,
    /// Configured global connection cap; 0 = derived from the descriptor limit.
    pub max_connections: usize,
    /// Per-address connection cap; 0 = off.
    pub max_connections_per_ip: usize,
    pub live_stall_timeout: std::time::Duration,
    pub max_batch: usize,
    pub min_commit_interval: std::time::Duration,
    pub cache_bytes: u64,
    pub checkpoint_positions: usize,
    pub checkpoint_interval: std::time::Duration,
    pub retention: Option<std::time::Duration>,
    /// The disk guard's limits (`store.min_free_mb`, `store.min_free_percent`).
    pub min_free: crate::store::guard::MinFree,
    pub max_frame_bytes: usize,
    pub lenient_crc: bool,
    /// Per-device settings (fix-time reading and model), with their default.
    pub devices: DeviceSettings,
    pub log_level: String,
}

impl Config {
    /// Parses a config file's text. Unknown keys and wrong types name the key.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    problem: one_line(&e.to_string()),
                })?;
        let known = toml::Table::try_from(Config::default()).unwrap_or_default();
        check_known_keys(&table, &known, "")?;
        let value = toml::Value::Table(table);
        serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::key(&key, one_line(&e.inner().to_string()))
        })
    }

    /// Reads `path`, or returns the defaults when no file is given.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Applies command-line flags on top of this config.
    pub fn with_overrides(mut self, o: &Overrides) -> Config {
        if let Some(d) = &o.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(a) = &o.tcp_listen {
            self.tcp.listen = a.clone();
        }
        if let Some(a) = &o.http_listen {
            self.http.listen = a.clone();
        }
        self
    }

    /// Checks every value and converts it to the type used at run time.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|_| {
                ConfigError::key(key, format!("`{v}` is not an address like 0.0.0.0:5023"))
            })
        };
        let tcp_listen = addr("tcp.listen", &self.tcp.listen)?;
        let http_listen = addr("http.listen", &self.http.listen)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::key("data_dir", "must not be empty"));
        }
        if self.tcp.idle_timeout_secs == 0 {
            return Err(ConfigError::key(
                "tcp.idle_timeout_secs",
                "must be at least 1",
            ));
        }
        for (key, v) in [
            ("tcp.write_timeout_secs", self.tcp.write_timeout_secs),
            ("tcp.login_timeout_secs", self.tcp.login_timeout_secs),
            ("tcp.frame_timeout_secs", self.tcp.frame_timeout_secs),
            (
                "http.live_stall_timeout_secs",
                self.http.live_stall_timeout_secs,
            ),
        ] {
            if !(1..=86_400).contains(&v) {
                return Err(ConfigError::key(key, "must be between 1 and 86400"));
            }
        }
        for (key, v) in [
            ("tcp.max_connections", self.tcp.max_connections),
            (
                "tcp.max_connections_per_ip",
                self.tcp.max_connections_per_ip,
            ),
        ] {
            if v > 10_000_000 {
                return Err(ConfigError::key(key, "must be at most 10000000"));
            }
        }
        if !(1..=1_000_000).contains(&self.store.max_batch) {
            return Err(ConfigError::key(
                "store.max_batch",
                "must be between 1 and 1000000",
            ));
        }
        // Group commit promises a flush at least every 10 ms.
        if self.store.min_commit_interval_ms > 10 {
            return Err(ConfigError::key(
                "store.min_commit_interval_ms",
                "must be between 0 and 10",
            ));
        }
        if !(1_000..=100_000_000).contains(&self.store.checkpoint_positions) {
            return Err(ConfigError::key(
                "store.checkpoint_positions",
                "must be between 1000 and 100000000",
            ));
        }
        if !(1..=86_400).contains(&self.store.checkpoint_interval_secs) {
            return Err(ConfigError::key(
                "store.checkpoint_interval_secs",
                "must be between 1 and 86400",
            ));
        }
        if self.store.retention_days > 36_500 {
            return Err(ConfigError::key(
                "store.retention_days",
                "must be at most 36500",
            ));
        }
        if self.store.min_free_mb > 1 << 30 {
            return Err(ConfigError::key(
                "store.min_free_mb",
                "must be at most 1073741824 (1 PiB)",
            ));
        }
        if self.store.min_free_percent > 100 {
            return Err(ConfigError::key(
                "store.min_free_percent",
                "must be between 0 and 100",
            ));
        }
        if !(1..=65_536).contains(&self.store.cache_mb) {
            return Err(ConfigError::key(
                "store.cache_mb",
                "must be between 1 and 65536",
            ));
        }
        // 64 KiB is the largest size a 0x7979 length field can declare.
        if !(64..=65_541).contains(&self.protocol.max_frame_bytes) {
            return Err(ConfigError::key(
                "protocol.max_frame_bytes",
                "must be between 64 and 65541",
            ));
        }
        let lenient_crc = match self.protocol.crc.as_str() {
            "strict" => false,
            "lenient" => true,
            other => {
                return Err(ConfigError::key(
                    "protocol.crc",
                    format!("`{other}` is neither \"strict\" nor \"lenient\""),
                ))
            }
        };
        let devices = self.device_settings()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::key(
                "log.level",
                format!("`{}` is not a log filter like \"info\"", self.log.level),
            ));
        }
        Ok(Settings {
            data_dir: self.data_dir.clone(),
            tcp_listen,
            http_listen,
            idle_timeout: std::time::Duration::from_secs(self.tcp.idle_timeout_secs),
            write_timeout: std::time::Duration::from_secs(self.tcp.write_timeout_secs),
            login_timeout: std::time::Duration::from_secs(self.tcp.login_timeout_secs),
            frame_timeout: std::time::Duration::from_secs(self.tcp.frame_timeout_secs),
            max_connections: self.tcp.max_connections as usize,
            max_connections_per_ip: self.tcp.max_connections_per_ip as usize,
            live_stall_timeout: std::time::Duration::from_secs(self.http.live_stall_timeout_secs),
            max_batch: self.store.max_batch,
            min_commit_interval: std::time::Duration::from_millis(
                self.store.min_commit_interval_ms,
            ),
            cache_bytes: self.store.cache_mb * 1024 * 1024,
            checkpoint_positions: self.store.checkpoint_positions,
            checkpoint_interval: std::time::Duration::from_secs(
                self.store.checkpoint_interval_secs,
            ),
            retention: (self.store.retention_days > 0)
                .then(|| std::time::Duration::from_secs(self.store.retention_days * 86_400)),
            min_free: crate::store::guard::MinFree {
                bytes: self.store.min_free_mb * 1024 * 1024,
                percent: self.store.min_free_percent,
            },
            max_frame_bytes: self.protocol.max_frame_bytes,
            lenient_crc,
            devices,
            log_level: self.log.level.clone(),
        })
    }

    /// `protocol.device_time`, `protocol.device_model` and every `devices.<imei>` table,
    /// checked; a device's own keys override the defaults one by one.
    fn device_settings(&self) -> Result<DeviceSettings, ConfigError> {
        let default = DeviceSetting {
            time: TimeSetting::parse(&self.protocol.device_time)
                .map_err(|p| ConfigError::key("protocol.device_time", p))?,
            model: parse_model(&self.protocol.device_model)
                .map_err(|p| ConfigError::key("protocol.device_model", p))?,
        };
        let mut per_device = std::collections::HashMap::new();
        for (imei, dev) in &self.devices {
            let parsed = Imei::parse(imei).ok_or_else(|| {
                ConfigError::key(
                    &format!("devices.{imei}"),
                    "is not a 15-digit IMEI (write it quoted: [devices.\"864717003283581\"])",
                )
            })?;
            let mut setting = default;
            if let Some(time) = &dev.time {
                setting.time = TimeSetting::parse(time)
                    .map_err(|p| ConfigError::key(&format!("devices.{imei}.time"), p))?;
            }
            if let Some(model) = &dev.model {
                setting.model = parse_model(model)
                    .map_err(|p| ConfigError::key(&format!("devices.{imei}.model"), p))?;
            }
            if setting != default {
                per_device.insert(parsed.as_u64(), setting);
            }
        }
        Ok(DeviceSettings {
            default,
            per_device,
        })
    }
}

/// Model names a device may be given (case does not matter), besides `""` (standard)
/// and any name starting with `LW`. The first seven need no setting: they are the
/// standard layouts, accepted so that naming the real model is never an error.
pub const MODEL_NAMES: &[&str] = &[
    "GT06", "GT06N", "TR06", "JM01", "GT800", "VL01", "VL03", "NT11", "NT20", "NT26", "NT40",
    "NT46", "VL100", "XT40", "QH302R", "SEEWORLD", "R11", "VL103", "LL303", "VL512", "G18",
];

/// A model name as the config gives it. `Model::from_name` reads every unknown name as
/// the standard layouts; a misspelt model would then silently decode wrong, so here an
/// unknown name is an error that lists the accepted ones.
fn parse_model(name: &str) -> Result<Model, String> {
    let upper = name.trim().to_ascii_uppercase();
    let model = Model::from_name(&upper);
    if upper.is_empty() || model != Model::Standard || MODEL_NAMES.contains(&upper.as_str()) {
        Ok(model)
    } else {
        Err(format!(
            "`{name}` is not a known model; accepted: \"\" (standard), {}, LW* (e.g. LW4G-4B)",
            MODEL_NAMES.join(", ")
        ))
    }
}

/// Rejects keys that `known` (the default config as a table) does not have, naming the
/// full dotted key; serde's own message would only name the table.
fn check_known_keys(t: &toml::Table, known: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (k, v) in t {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        // Device tables are keyed by IMEI: their names are checked by `validate`, their
        // keys by serde (`deny_unknown_fields`).
        if full == "devices" {
            continue;
        }
        match known.get(k) {
            None => return Err(ConfigError::key(&full, "unknown key")),
            Some(toml::Value::Table(kt)) => {
                if let toml::Value::Table(vt) = v {
                    check_known_keys(vt, kt, &full)?;
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// toml's messages span several lines with a source excerpt; an operator's terminal
/// and journald want one.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('|')
                && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), s)
    }

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn example_file_documents_exactly_the_defaults() {
        let text = include_str!("../gt06.toml.example");
        // The example shows every key commented out with its default; uncommenting
        // all of them must give the defaults back.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = ") || r.starts_with('['))
                    .unwrap_or("")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&uncommented).unwrap(), Config::default());
        let documented = toml::Table::try_from(Config::default()).unwrap();
        for (section, v) in &documented {
            match v {
                toml::Value::Table(t) => {
                    for k in t.keys() {
                        assert!(
                            uncommented.contains(&format!("\n{k} = ")),
                            "{section}.{k} undocumented"
                        );
                    }
                }
                _ => assert!(
                    uncommented.contains(&format!("{section} = ")),
                    "{section} undocumented"
                ),
            }
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        assert_eq!(
            key_of(parse("[tcp]\nlisen = \"x\"\n").unwrap_err()),
            "tcp.lisen"
        );
        assert_eq!(key_of(parse("colour = 1\n").unwrap_err()), "colour");
    }

    #[test]
    fn wrong_type_is_named() {
        assert_eq!(
            key_of(parse("[tcp]\nidle_timeout_secs = \"soon\"\n").unwrap_err()),
            "tcp.idle_timeout_secs"
        );
    }

    #[test]
    fn bad_address_is_named_by_validate() {
        let c = parse("[http]\nlisten = \"localhost\"\n").unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "http.listen");
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let c = parse("data_dir = \"/srv/a\"\n[tcp]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(c.http.listen, "0.0.0.0:8080");
        let c = c.with_overrides(&Overrides {
            tcp_listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        });
        assert_eq!(c.tcp.listen, "127.0.0.1:2");
        assert_eq!(c.data_dir, PathBuf::from("/srv/a"));
    }

    #[test]
    fn group_commit_pause_is_bounded_by_the_flush_promise() {
        let c = parse("[store]\nmin_commit_interval_ms = 11\n").unwrap();
        assert_eq!(
            key_of(c.validate().unwrap_err()),
            "store.min_commit_interval_ms"
        );
        let c = parse("[store]\nmin_commit_interval_ms = 0\n").unwrap();
        assert!(c.validate().unwrap().min_commit_interval.is_zero());
        let d = Config::default().validate().unwrap();
        assert_eq!(d.min_commit_interval, std::time::Duration::from_millis(2));
    }

    #[test]
    fn crc_policy_must_be_known() {
        let c = parse("[protocol]\ncrc = \"maybe\"\n").unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "protocol.crc");
        let c = parse("[protocol]\ncrc = \"lenient\"\n").unwrap();
        assert!(c.validate().unwrap().lenient_crc);
    }

    #[test]
    fn device_time_settings_are_checked_and_name_their_key() {
        let c = parse(
            "[protocol]\ndevice_time = \"auto\"\n[devices.\"864717003283581\"]\ntime = \"+05:30\"\n",
        )
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.devices.default.time, TimeSetting::Auto);
        assert_eq!(
            s.devices.for_imei(864_717_003_283_581).time,
            TimeSetting::Offset(330)
        );
        assert_eq!(s.devices.for_imei(1).time, TimeSetting::Auto);

        let c = parse("[devices.\"864717003283581\"]\ntime = \"+5:30\"\n").unwrap();
        assert_eq!(
            key_of(c.validate().unwrap_err()),
            "devices.864717003283581.time"
        );
        let c = parse("[devices.\"12345\"]\ntime = \"utc\"\n").unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "devices.12345");
        let c = parse("[protocol]\ndevice_time = \"local\"\n").unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "protocol.device_time");
        assert_eq!(
            key_of(parse("[devices.\"864717003283581\"]\ncolour = 1\n").unwrap_err()),
            "devices.864717003283581.colour"
        );
    }

    #[test]
    fn device_model_settings_are_checked_and_name_their_key() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.devices.for_imei(1).model, Model::Standard);

        let c = parse(
            "[protocol]\ndevice_model = \"seeworld\"\n\
             [devices.\"864717003283581\"]\nmodel = \"VL103\"\n\
             [devices.\"864717003283582\"]\ntime = \"+05:30\"\n\
             [devices.\"864717003283583\"]\nmodel = \"GT06N\"\n",
        )
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.devices.for_imei(864_717_003_283_581).model, Model::Vl);
        assert_eq!(
            s.devices.for_imei(864_717_003_283_581).time,
            TimeSetting::Utc
        );
        // A device with only its own time keeps the default model.
        let d = s.devices.for_imei(864_717_003_283_582);
        assert_eq!(
            (d.model, d.time),
            (Model::Seeworld, TimeSetting::Offset(330))
        );
        // A standard model's name is accepted and means the standard layouts.
        assert_eq!(
            s.devices.for_imei(864_717_003_283_583).model,
            Model::Standard
        );
        assert_eq!(s.devices.for_imei(1).model, Model::Seeworld);
        let lw = parse("[devices.\"864717003283581\"]\nmodel = \"LW4G-4B\"\n").unwrap();
        assert_eq!(
            lw.validate()
                .unwrap()
                .devices
                .for_imei(864_717_003_283_581)
                .model,
            Model::Lw
        );

        let c = parse("[devices.\"864717003283581\"]\nmodel = \"VL130\"\n").unwrap();
        let e = c.validate().unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("VL103") && text.contains("SEEWORLD"),
            "{text}"
        );
        assert_eq!(key_of(e), "devices.864717003283581.model");
        let c = parse("[protocol]\ndevice_model = \"nope\"\n").unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "protocol.device_model");
        assert_eq!(
            key_of(parse("[devices.\"864717003283581\"]\nmodel = 103\n").unwrap_err()),
            "devices.864717003283581.model"
        );
    }

    #[test]
    fn syntax_error_is_one_line() {
        let e = parse("[tcp\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }));
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
