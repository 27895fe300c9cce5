//! A real HTTP/1.1 webhook receiver for notification tests: it records every request (headers
//! and body), can fail the first N attempts with a 500, and verifies Vantage's webhook
//! signature the way a receiver in the field would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// The status we answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct Inner {
    requests: Vec<Received>,
    fail_next: usize,
}

/// A receiver on `127.0.0.1:port`; it stops when dropped.
pub struct Receiver {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the next request on a connection (head and a `content-length` body, at most 1 MiB);
/// `buffer` keeps bytes read past it for the next request (keep-alive). `Ok(None)` when the
/// client closed the connection between requests.
///
/// # Errors
/// A malformed or oversized request, or a connection cut mid-request.
pub async fn read_request(
    stream: &mut tokio::net::TcpStream,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<Option<Received>> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::ensure!(buffer.is_empty(), "closed before the head ended");
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(buffer.len() < 64 * 1024, "head too long");
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(0);
    anyhow::ensure!(length <= 1 << 20, "body too long");
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before the body ended");
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(buffer[head_end..head_end + length].to_vec())
        .context("body is not UTF-8")?;
    buffer.drain(..head_end + length);
    Ok(Some(Received {
        path,
        headers,
        body,
        status: 0,
    }))
}

impl Receiver {
    /// Starts a receiver that answers 200 (after failing the first `fail_first` requests with
    /// 500).
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start(fail_first: usize) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Mutex::new(Inner {
            requests: Vec::new(),
            fail_next: fail_first,
        }));
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let Ok(Some(mut request)) = read_request(&mut stream, &mut buffer).await else {
                        return;
                    };
                    let status = {
                        let mut inner = shared.lock().unwrap_or_else(|e| e.into_inner());
                        let status = if inner.fail_next > 0 {
                            inner.fail_next -= 1;
                            500
                        } else {
                            200
                        };
                        request.status = status;
                        inner.requests.push(request);
                        status
                    };
                    let reason = if status == 200 {
                        "OK"
                    } else {
                        "Internal Server Error"
                    };
                    let answer = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Receiver { port, inner, task })
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Fails the next `n` requests with 500.
    pub fn fail_next(&self, n: usize) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fail_next = n;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// Requests answered 200, per idempotency key: how often each key was accepted.
    pub fn accepted_per_key(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for request in self.requests().iter().filter(|r| r.status == 200) {
            let key = request
                .headers
                .get("idempotency-key")
                .cloned()
                .unwrap_or_default();
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

/// Verifies a webhook's `x-vantage-signature` (`v1=<hex HMAC-SHA256(secret,
/// "<timestamp>.<body>")>`) and that its `x-vantage-timestamp` is within `window_s` of now.
///
/// # Errors
/// Which part is missing or wrong.
pub fn verify_signature(request: &Received, secret: &str, window_s: i64) -> anyhow::Result<()> {
    let timestamp = request
        .headers
        .get("x-vantage-timestamp")
        .context("no x-vantage-timestamp")?;
    let signature = request
        .headers
        .get("x-vantage-signature")
        .context("no x-vantage-signature")?;
    let hex_mac = signature
        .strip_prefix("v1=")
        .context("signature is not v1=…")?;
    let mac = hex::decode(hex_mac).context("signature is not hex")?;
    let at: i64 = timestamp.parse().context("timestamp is not a number")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    anyhow::ensure!(
        (now - at).abs() <= window_s,
        "timestamp {at} is {}s off",
        now - at
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(
        &key,
        format!("{timestamp}.{}", request.body).as_bytes(),
        &mac,
    )
    .map_err(|_| anyhow::anyhow!("signature does not match"))
}
