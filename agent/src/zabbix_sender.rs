//! Zabbix sender out: every host-metrics sample also sent to a Zabbix server or proxy as
//! trapper items, over the Zabbix sender protocol, for operators who keep Zabbix as their
//! system of record. This module owns the items a sample becomes, the protocol's framing, the
//! reading of Zabbix's answer and the one task that sends; the settings are
//! [`crate::config::ZabbixSenderConfig`], the sampling is [`crate::metrics`].
//!
//! The protocol: a request is `ZBXD`, a flags byte `0x01`, the body's length as 4 bytes
//! little-endian and 4 reserved zero bytes, then the body
//! `{"request":"sender data","data":[{"host","key","value","clock","ns"}, …]}`; Zabbix answers
//! with the same header and `{"response":"success","info":"processed: N; failed: M; total: T;
//! seconds spent: S"}`, then closes the connection. One connection per sample. The answer is
//! read only while it is uncompressed, not "large", and at most [`MAX_ANSWER_BYTES`] long, and
//! the whole exchange (resolving, connecting, writing, reading) has one deadline.
//!
//! Items, each key after the configured prefix (`vantage.` by default), valued at the
//! sample's measurement time:
//!
//! | key | value | Zabbix type |
//! | --- | --- | --- |
//! | `cpu_pct` | CPU busy, all cores, % | float |
//! | `mem_used_pct` | memory used, % (absent without a memory total) | float |
//! | `swap_used_pct` | swap used, % (absent on a node without swap) | float |
//! | `disk_used_pct` | the fullest mount's used share, % (absent without disks) | float |
//! | `load1`, `load5`, `load15` | load averages | float |
//! | `net_rx_bytes_per_s`, `net_tx_bytes_per_s` | bytes per second summed over every interface the agent reports, as the control plane's rollups sum them | float |
//! | `uptime_s` | seconds since boot | unsigned |
//!
//! It never stands in the MQTT session's way: [`ZabbixOut::offer`] only encodes the batch
//! (about a kilobyte) into a slot that holds one, and a task of its own sends it. A sample
//! that still waits when the next one comes (a send in flight, a slow Zabbix) is replaced by
//! it and counted as dropped, so at most one batch waits and one is in flight; a failed send
//! (Zabbix down, a timeout, a bad answer) is counted and not retried: the next sample goes
//! out on a new connection. Failed sends, dropped samples and items Zabbix refused are logged
//! at most once a minute, with the counts since the last such log; the log names the server
//! and the Zabbix host, which are not secrets (the protocol carries none: no PSK or TLS here).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use vantage_mqtt::{HostMetrics, IpVersion};

use crate::config::{ZabbixSenderConfig, valid_zabbix_host};

/// The protocol's header: `ZBXD`, flags, length, reserved.
pub const HEADER_LEN: usize = 13;
/// The header's flags byte: the Zabbix protocol, uncompressed, not "large".
const FLAG_PROTOCOL: u8 = 0x01;
/// Longest answer body read; Zabbix's answer to a sender request is about 90 bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Problems are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The value types of the items, as in the shipped Zabbix template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// Zabbix's "Numeric (float)", history table 0.
    Float,
    /// Zabbix's "Numeric (unsigned)", history table 3.
    Unsigned,
}

/// Every item a sample can become, by key suffix, in the order they are sent.
pub const ITEMS: [(&str, ValueType); 10] = [
    ("cpu_pct", ValueType::Float),
    ("mem_used_pct", ValueType::Float),
    ("swap_used_pct", ValueType::Float),
    ("disk_used_pct", ValueType::Float),
    ("load1", ValueType::Float),
    ("load5", ValueType::Float),
    ("load15", ValueType::Float),
    ("net_rx_bytes_per_s", ValueType::Float),
    ("net_tx_bytes_per_s", ValueType::Float),
    ("uptime_s", ValueType::Unsigned),
];

/// What went wrong with Zabbix's answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer ended after {len} bytes, inside its {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("the answer does not start with ZBXD")]
    Signature,
    #[error("the answer has flags {flags:#04x}; only 0x01 (uncompressed, not large) is understood")]
    Flags { flags: u8 },
    #[error("the answer announces {len} bytes, more than the {MAX_ANSWER_BYTES} read")]
    Oversize { len: u64 },
    #[error("the answer announces {expected} bytes but ended after {got}")]
    Truncated { expected: usize, got: usize },
    #[error("the answer is not the sender protocol's JSON: {message}")]
    Json { message: String },
    #[error("Zabbix refused the request: response {response:?}, info {info:?}")]
    Refused { response: String, info: String },
    #[error("the answer's info {info:?} has no processed and failed counts")]
    Info { info: String },
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to Zabbix at {server}: {message}")]
    Connect { server: String, message: String },
    #[error("Zabbix at {server} did not complete the exchange within {timeout_ms} ms")]
    Timeout { server: String, timeout_ms: u128 },
    #[error("the connection to Zabbix at {server} failed: {source}")]
    Io {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Zabbix at {server} answered badly: {source}")]
    Answer {
        server: String,
        #[source]
        source: AnswerError,
    },
}

/// Zabbix's counts for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Items stored.
    pub processed: u64,
    /// Items refused: no such host or item, not a trapper item, a host not monitored, ….
    pub failed: u64,
    /// Items in the request.
    pub total: u64,
}

/// The key suffixes and values of one sample, in [`ITEMS`] order; values a sample lacks, and
/// numbers that are not finite, are left out.
pub fn items(sample: &HostMetrics) -> Vec<(&'static str, String)> {
    let pct = |used: u64, total: u64| (total > 0).then(|| used as f64 * 100.0 / total as f64);
    let float = |value: f64| value.is_finite().then(|| format!("{value:.3}"));
    let disk = sample
        .disks
        .iter()
        .filter_map(|d| pct(d.used_bytes, d.total_bytes))
        .reduce(f64::max);
    let rx: f64 = sample.nets.iter().map(|n| n.rx_bytes_per_s).sum();
    let tx: f64 = sample.nets.iter().map(|n| n.tx_bytes_per_s).sum();
    let values = [
        float(f64::from(sample.cpu_pct)),
        pct(sample.mem_used_bytes, sample.mem_total_bytes).and_then(float),
        pct(sample.swap_used_bytes, sample.swap_total_bytes).and_then(float),
        disk.and_then(float),
        float(sample.load1),
        float(sample.load5),
        float(sample.load15),
        float(rx),
        float(tx),
        Some(sample.uptime_s.to_string()),
    ];
    ITEMS
        .iter()
        .zip(values)
        .filter_map(|((key, _), value)| Some((*key, value?)))
        .collect()
}

/// The header of a request or answer whose body is `len` bytes.
pub fn header(len: u32) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(b"ZBXD");
    header[4] = FLAG_PROTOCOL;
    header[5..9].copy_from_slice(&len.to_le_bytes());
    header
}

#[derive(Serialize)]
struct Request<'a> {
    request: &'static str,
    data: Vec<DataItem<'a>>,
}

#[derive(Serialize)]
struct DataItem<'a> {
    host: &'a str,
    key: String,
    value: String,
    clock: i64,
    ns: i64,
}

/// One request (header and body) carrying `sample` for the Zabbix host `host`, each key
/// `key_prefix` + the item's name, each value timed at the sample's measurement.
pub fn encode(host: &str, key_prefix: &str, sample: &HostMetrics) -> Vec<u8> {
    let clock = sample.measured_at_ms.div_euclid(1000);
    let ns = sample.measured_at_ms.rem_euclid(1000) * 1_000_000;
    let request = Request {
        request: "sender data",
        data: items(sample)
            .into_iter()
            .map(|(key, value)| DataItem {
                host,
                key: format!("{key_prefix}{key}"),
                value,
                clock,
                ns,
            })
            .collect(),
    };
    // Plain strings and numbers: serialising cannot fail, and the body (host and prefix are
    // bounded by the config) stays far below 4 GiB.
    let body = serde_json::to_vec(&request).unwrap_or_default();
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&header(body.len() as u32));
    frame.extend_from_slice(&body);
    frame
}

/// The body length a header announces.
///
/// # Errors
/// Not `ZBXD`, flags other than the protocol's alone, or longer than [`MAX_ANSWER_BYTES`].
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<usize, AnswerError> {
    if &header[..4] != b"ZBXD" {
        return Err(AnswerError::Signature);
    }
    if header[4] != FLAG_PROTOCOL {
        return Err(AnswerError::Flags { flags: header[4] });
    }
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    if len as usize > MAX_ANSWER_BYTES {
        return Err(AnswerError::Oversize {
            len: u64::from(len),
        });
    }
    Ok(len as usize)
}

#[derive(Deserialize)]
struct AnswerBody {
    response: String,
    #[serde(default)]
    info: String,
}

/// The counts of an answer's body.
///
/// # Errors
/// Not JSON of the protocol, a response other than `success`, or an info without counts.
pub fn parse_body(body: &[u8]) -> Result<Answer, AnswerError> {
    let answer: AnswerBody = serde_json::from_slice(body).map_err(|error| AnswerError::Json {
        message: error.to_string(),
    })?;
    if answer.response != "success" {
        return Err(AnswerError::Refused {
            response: answer.response,
            info: answer.info,
        });
    }
    let count = |name: &str| {
        answer.info.split(';').find_map(|part| {
            let (key, value) = part.split_once(':')?;
            (key.trim() == name).then(|| value.trim().parse::<u64>().ok())?
        })
    };
    match (count("processed"), count("failed")) {
        (Some(processed), Some(failed)) => Ok(Answer {
            processed,
            failed,
            total: count("total").unwrap_or(processed + failed),
        }),
        _ => Err(AnswerError::Info { info: answer.info }),
    }
}

/// A whole answer (header and body), as received.
///
/// # Errors
/// See [`AnswerError`].
pub fn parse_answer(bytes: &[u8]) -> Result<Answer, AnswerError> {
    let header: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(AnswerError::Short { len: bytes.len() })?;
    let len = parse_header(header)?;
    let body = &bytes[HEADER_LEN..];
    if body.len() < len {
        return Err(AnswerError::Truncated {
            expected: len,
            got: body.len(),
        });
    }
    parse_body(&body[..len])
}

/// Reads one answer from `reader`: the header, then at most the announced (and bounded)
/// length; whatever follows is left unread.
///
/// # Errors
/// I/O failures, or see [`AnswerError`].
pub async fn read_answer<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Result<Answer, AnswerError>, std::io::Error> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(reader, &mut header).await?;
    if got < HEADER_LEN {
        return Ok(Err(AnswerError::Short { len: got }));
    }
    let len = match parse_header(&header) {
        Ok(len) => len,
        Err(error) => return Ok(Err(error)),
    };
    let mut body = vec![0u8; len];
    let got = read_full(reader, &mut body).await?;
    if got < len {
        return Ok(Err(AnswerError::Truncated { expected: len, got }));
    }
    Ok(parse_body(&body))
}

/// Fills `buffer` or stops at end of stream; how many bytes it read.
async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut [u8],
) -> Result<usize, std::io::Error> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// `host:port` for messages, an IPv6 address in brackets.
fn server_text(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Sends one request (from [`encode`]) to the trapper at `host`:`port` and reads the answer,
/// all within `timeout`.
///
/// # Errors
/// See [`SendError`].
pub async fn send(
    host: &str,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<Answer, SendError> {
    let server = || server_text(host, port);
    let exchange = async {
        let connected = crate::probe::connect(host, port, IpVersion::Any)
            .await
            .map_err(|message| SendError::Connect {
                server: server(),
                message,
            })?;
        let mut stream = connected.stream;
        let io = |source| SendError::Io {
            server: server(),
            source,
        };
        stream.write_all(request).await.map_err(io)?;
        read_answer(&mut stream)
            .await
            .map_err(io)?
            .map_err(|source| SendError::Answer {
                server: server(),
                source,
            })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SendError::Timeout {
            server: server(),
            timeout_ms: timeout.as_millis(),
        })?
}

/// Counts since the sender started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Requests Zabbix answered.
    pub sent: u64,
    /// Samples replaced by a newer one before they could be sent.
    pub dropped: u64,
    /// Sends that failed (connect, timeout, I/O, a bad answer); their samples are lost for
    /// Zabbix.
    pub failed: u64,
    /// Items Zabbix stored.
    pub items_processed: u64,
    /// Items Zabbix refused.
    pub items_refused: u64,
}

/// What the session and the sending task share.
#[derive(Default)]
struct Shared {
    /// The next request, when one waits.
    slot: Mutex<Option<Vec<u8>>>,
    wake: Notify,
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    items_processed: AtomicU64,
    items_refused: AtomicU64,
}

impl Shared {
    fn stats(&self) -> Stats {
        Stats {
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            items_processed: self.items_processed.load(Ordering::Relaxed),
            items_refused: self.items_refused.load(Ordering::Relaxed),
        }
    }
}

/// The running sender: [`Self::offer`] each sample; a task sends the latest one.
pub struct ZabbixOut {
    shared: Arc<Shared>,
    host: String,
    key_prefix: String,
    task: JoinHandle<()>,
}

impl Drop for ZabbixOut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ZabbixOut {
    /// Starts the sending task (on the current tokio runtime) for `config`; items go for
    /// `config.host`, or else for `hostname`.
    ///
    /// # Errors
    /// `server` is not usable, or the host name (when it is the node's hostname) is not one
    /// Zabbix accepts.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(config: &ZabbixSenderConfig, hostname: &str) -> Result<ZabbixOut, String> {
        let (server_host, port) = config.server_addr()?;
        let host = config.host_name(hostname);
        valid_zabbix_host(&host).map_err(|why| {
            format!(
                "zabbix_sender.host is not set and the hostname {host:?} {why}: set \
                 zabbix_sender.host to the host's name in Zabbix"
            )
        })?;
        let shared = Arc::new(Shared::default());
        let timeout = Duration::from_millis(u64::from(config.timeout_ms));
        let server = server_text(&server_host, port);
        tracing::info!(%server, %host, "Sending host metrics to Zabbix as well");
        let task = tokio::spawn(run(
            shared.clone(),
            server_host,
            port,
            host.clone(),
            timeout,
        ));
        Ok(ZabbixOut {
            shared,
            host,
            key_prefix: config.key_prefix.clone(),
            task,
        })
    }

    /// Hands a sample to the sending task without waiting: it replaces (and counts as
    /// dropped) a sample that still waits.
    pub fn offer(&self, sample: &HostMetrics) {
        let request = encode(&self.host, &self.key_prefix, sample);
        let replaced = self
            .shared
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(request)
            .is_some();
        if replaced {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.wake.notify_one();
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }
}

/// The sending task: takes the waiting request, sends it, counts, logs problems at most once
/// a minute.
async fn run(shared: Arc<Shared>, server_host: String, port: u16, host: String, timeout: Duration) {
    let server = server_text(&server_host, port);
    let mut last_log: Option<Instant> = None;
    // The counts at the last problem log, to report what happened since.
    let mut logged = shared.stats();
    // A problem was logged and no send has succeeded since.
    let mut failing = false;
    loop {
        shared.wake.notified().await;
        let Some(request) = shared
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            continue;
        };
        let started = Instant::now();
        let outcome = send(&server_host, port, &request, timeout).await;
        drop(request);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut error = None;
        match outcome {
            Ok(answer) => {
                shared.sent.fetch_add(1, Ordering::Relaxed);
                shared
                    .items_processed
                    .fetch_add(answer.processed, Ordering::Relaxed);
                shared
                    .items_refused
                    .fetch_add(answer.failed, Ordering::Relaxed);
                tracing::debug!(
                    processed = answer.processed,
                    failed = answer.failed,
                    elapsed_ms,
                    "Sent host metrics to Zabbix"
                );
                if failing && answer.failed == 0 {
                    failing = false;
                    tracing::info!(%server, %host, "Zabbix accepts host metrics again");
                }
            }
            Err(send_error) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %send_error, elapsed_ms, "Cannot send host metrics to Zabbix");
                error = Some(send_error);
            }
        }
        let now = shared.stats();
        let problem = now.failed > logged.failed
            || now.dropped > logged.dropped
            || now.items_refused > logged.items_refused;
        if problem && last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            last_log = Some(Instant::now());
            failing = true;
            let n_failed_sends = now.failed - logged.failed;
            let n_dropped_samples = now.dropped - logged.dropped;
            let n_refused_items = now.items_refused - logged.items_refused;
            match &error {
                Some(error) => tracing::warn!(
                    %server, %host, %error, n_failed_sends, n_dropped_samples, n_refused_items,
                    "Cannot send host metrics to Zabbix; samples are lost for Zabbix until it answers (logged at most once a minute)"
                ),
                None if n_refused_items > 0 => tracing::warn!(
                    %server, %host, n_failed_sends, n_dropped_samples, n_refused_items,
                    "Zabbix refused host-metric items: the host must exist in Zabbix, be monitored and have the Vantage agent template's trapper items (new items are refused until Zabbix's configuration cache refreshes; logged at most once a minute)"
                ),
                None => tracing::warn!(
                    %server, %host, n_failed_sends, n_dropped_samples, n_refused_items,
                    "Zabbix is slower than the metrics interval; samples are dropped for Zabbix (logged at most once a minute)"
                ),
            }
            logged = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use vantage_mqtt::{DiskUsage, NetUsage};

    use super::*;

    fn sample() -> HostMetrics {
        HostMetrics {
            seq: 1,
            measured_at_ms: 1_700_000_000_250,
            cpu_pct: 12.5,
            cores_pct: None,
            mem_total_bytes: 1000,
            mem_used_bytes: 250,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            load1: 0.5,
            load5: 0.25,
            load15: 0.125,
            uptime_s: 3600,
            disks: vec![
                DiskUsage {
                    mount: "/".into(),
                    total_bytes: 100,
                    used_bytes: 40,
                },
                DiskUsage {
                    mount: "/data".into(),
                    total_bytes: 200,
                    used_bytes: 180,
                },
            ],
            nets: vec![
                NetUsage {
                    iface: "eth0".into(),
                    rx_bytes: 0,
                    tx_bytes: 0,
                    rx_bytes_per_s: 100.0,
                    tx_bytes_per_s: 10.0,
                },
                NetUsage {
                    iface: "lo".into(),
                    rx_bytes: 0,
                    tx_bytes: 0,
                    rx_bytes_per_s: 1.0,
                    tx_bytes_per_s: f64::NAN,
                },
            ],
        }
    }

    fn config(server: &str, timeout_ms: u32) -> ZabbixSenderConfig {
        ZabbixSenderConfig {
            server: server.into(),
            host: Some("web-1".into()),
            key_prefix: "vantage.".into(),
            timeout_ms,
        }
    }

    fn answer_frame(body: &str) -> Vec<u8> {
        let mut frame = header(body.len() as u32).to_vec();
        frame.extend_from_slice(body.as_bytes());
        frame
    }

    #[test]
    fn a_header_is_zbxd_the_flag_the_length_little_endian_and_zeros() {
        assert_eq!(
            header(0x0102_0304),
            [
                b'Z', b'B', b'X', b'D', 0x01, 0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0
            ]
        );
        assert_eq!(parse_header(&header(90)), Ok(90));
    }

    #[test]
    fn a_sample_becomes_one_request_of_its_items() {
        let frame = encode("web-1", "vantage.", &sample());
        let len = u32::from_le_bytes(frame[5..9].try_into().unwrap()) as usize;
        assert_eq!(&frame[..5], b"ZBXD\x01");
        assert_eq!(&frame[9..13], &[0, 0, 0, 0]);
        assert_eq!(frame.len(), HEADER_LEN + len);
        let body: serde_json::Value = serde_json::from_slice(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(body["request"], "sender data");
        let data = body["data"].as_array().unwrap();
        let value = |key: &str| {
            data.iter()
                .find(|item| item["key"] == key)
                .map(|item| item["value"].as_str().unwrap().to_owned())
        };
        assert_eq!(value("vantage.cpu_pct").as_deref(), Some("12.500"));
        assert_eq!(value("vantage.mem_used_pct").as_deref(), Some("25.000"));
        // No swap: no item, rather than a made-up 0 %.
        assert_eq!(value("vantage.swap_used_pct"), None);
        // The fullest mount, not the first.
        assert_eq!(value("vantage.disk_used_pct").as_deref(), Some("90.000"));
        assert_eq!(value("vantage.load15").as_deref(), Some("0.125"));
        assert_eq!(
            value("vantage.net_rx_bytes_per_s").as_deref(),
            Some("101.000")
        );
        // A NaN rate is not a number Zabbix can store.
        assert_eq!(value("vantage.net_tx_bytes_per_s"), None);
        assert_eq!(value("vantage.uptime_s").as_deref(), Some("3600"));
        for item in data {
            assert_eq!(item["host"], "web-1");
            assert_eq!(item["clock"], 1_700_000_000);
            assert_eq!(item["ns"], 250_000_000);
        }
        assert_eq!(data.len(), 8);
    }

    #[test]
    fn answers_are_parsed_and_bad_ones_are_errors() {
        let ok = answer_frame(
            r#"{"response":"success","info":"processed: 9; failed: 2; total: 11; seconds spent: 0.000123"}"#,
        );
        assert_eq!(
            parse_answer(&ok),
            Ok(Answer {
                processed: 9,
                failed: 2,
                total: 11
            })
        );
        assert_eq!(parse_answer(&ok[..7]), Err(AnswerError::Short { len: 7 }));
        assert_eq!(
            parse_answer(&ok[..ok.len() - 1]),
            Err(AnswerError::Truncated {
                expected: ok.len() - HEADER_LEN,
                got: ok.len() - HEADER_LEN - 1
            })
        );
        let mut wrong = ok.clone();
        wrong[0] = b'X';
        assert_eq!(parse_answer(&wrong), Err(AnswerError::Signature));
        let mut compressed = ok.clone();
        compressed[4] = 0x03;
        assert_eq!(
            parse_answer(&compressed),
            Err(AnswerError::Flags { flags: 0x03 })
        );
        let mut oversize = header(0).to_vec();
        oversize[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse_answer(&oversize),
            Err(AnswerError::Oversize {
                len: u64::from(u32::MAX)
            })
        );
        assert!(matches!(
            parse_answer(&answer_frame("not json")),
            Err(AnswerError::Json { .. })
        ));
        assert!(matches!(
            parse_answer(&answer_frame(
                r#"{"response":"failed","info":"bad request"}"#
            )),
            Err(AnswerError::Refused { .. })
        ));
        assert!(matches!(
            parse_answer(&answer_frame(r#"{"response":"success","info":"all fine"}"#)),
            Err(AnswerError::Info { .. })
        ));
        assert!(matches!(
            parse_answer(&answer_frame(
                r#"{"response":"success","info":"processed: -1; failed: 0"}"#
            )),
            Err(AnswerError::Info { .. })
        ));
        // Every prefix of a good answer, and random bytes, are errors, never a panic.
        for end in 0..ok.len() {
            assert!(parse_answer(&ok[..end]).is_err());
        }
        let mut noise = 0x1234_5678_u32;
        for _ in 0..2000 {
            let len = (noise % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    noise = noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    if i < 5 {
                        b"ZBXD\x01"[i]
                    } else {
                        (noise >> 24) as u8
                    }
                })
                .collect();
            let _ = parse_answer(&bytes);
        }
    }

    /// A trapper that answers each connection with `answer` after reading the request, and
    /// hands the requests it read to the test.
    async fn fake_trapper(answer: Vec<u8>) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (requests_tx, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut header = [0u8; HEADER_LEN];
                if read_full(&mut stream, &mut header).await.unwrap_or(0) < HEADER_LEN {
                    continue;
                }
                let len = u32::from_le_bytes(header[5..9].try_into().unwrap()) as usize;
                let mut body = vec![0u8; len];
                let _ = read_full(&mut stream, &mut body).await;
                let mut request = header.to_vec();
                request.extend_from_slice(&body);
                let _ = requests_tx.send(request);
                let _ = stream.write_all(&answer).await;
            }
        });
        (port, requests)
    }

    #[tokio::test]
    async fn a_send_gets_the_counts_and_a_bad_answer_or_no_server_is_an_error() {
        let good = answer_frame(
            r#"{"response":"success","info":"processed: 9; failed: 0; total: 9; seconds spent: 0.0001"}"#,
        );
        let (port, mut requests) = fake_trapper(good).await;
        let request = encode("web-1", "vantage.", &sample());
        let answer = send("127.0.0.1", port, &request, Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!((answer.processed, answer.failed, answer.total), (9, 0, 9));
        assert_eq!(requests.recv().await.unwrap(), request);

        // An answer announcing more than the bound: refused after the header alone.
        let mut huge = header(0).to_vec();
        huge[5..9].copy_from_slice(&(10 * 1024 * 1024u32).to_le_bytes());
        let (port, _requests) = fake_trapper(huge).await;
        let error = send("127.0.0.1", port, &request, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                SendError::Answer {
                    source: AnswerError::Oversize { .. },
                    ..
                }
            ),
            "{error}"
        );

        // A connection closed after a few bytes.
        let (port, _requests) = fake_trapper(b"ZBX".to_vec()).await;
        let error = send("127.0.0.1", port, &request, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                SendError::Answer {
                    source: AnswerError::Short { len: 3 },
                    ..
                }
            ),
            "{error}"
        );

        // Nothing listens.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let error = send("127.0.0.1", port, &request, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(error, SendError::Connect { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                streams.push(stream);
            }
        });
        let started = Instant::now();
        let error = send(
            "127.0.0.1",
            port,
            &encode("web-1", "vantage.", &sample()),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, SendError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
        held.abort();
    }

    #[tokio::test]
    async fn offers_never_wait_and_keep_only_the_latest_sample_while_a_send_hangs() {
        // A trapper that accepts and never answers: each send hangs until its timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let held = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                streams.push(stream);
                let _ = accepted_tx.send(());
            }
        });
        let out = ZabbixOut::start(&config(&format!("127.0.0.1:{port}"), 500), "node").unwrap();
        out.offer(&sample());
        accepted.recv().await.unwrap();
        // The first send is in flight: these wait in the one slot, each replacing the last.
        let started = Instant::now();
        for _ in 0..100 {
            out.offer(&sample());
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "offers took {:?}",
            started.elapsed()
        );
        assert_eq!(out.stats().dropped, 99);
        // The first send times out; the latest sample goes next, on a new connection.
        accepted.recv().await.unwrap();
        for _ in 0..250 {
            if out.stats().failed == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = out.stats();
        assert_eq!((stats.failed, stats.sent, stats.dropped), (2, 0, 99));
        assert!(out.shared.slot.lock().unwrap().is_none());
        held.abort();
    }

    #[tokio::test]
    async fn counts_what_zabbix_processed_and_refused() {
        let (port, mut requests) = fake_trapper(answer_frame(
            r#"{"response":"success","info":"processed: 7; failed: 2; total: 9; seconds spent: 0.0001"}"#,
        ))
        .await;
        let out = ZabbixOut::start(&config(&format!("localhost:{port}"), 3000), "node").unwrap();
        out.offer(&sample());
        requests.recv().await.unwrap();
        for _ in 0..250 {
            if out.stats().sent == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = out.stats();
        assert_eq!(
            (stats.sent, stats.items_processed, stats.items_refused),
            (1, 7, 2)
        );
    }

    #[test]
    fn the_default_host_must_be_a_zabbix_host_name() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut config = config("127.0.0.1", 3000);
            config.host = None;
            assert!(ZabbixOut::start(&config, "node-1.example").is_ok());
            let error = ZabbixOut::start(&config, "").err().unwrap();
            assert!(error.contains("zabbix_sender.host"), "{error}");
        });
    }
}
