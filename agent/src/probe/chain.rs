//! Chain RPC probe: Solana (`getHealth`, `getSlot`) and EVM (`eth_syncing`,
//! `eth_blockNumber`) JSON-RPC over HTTP(S), with the lag behind a reference endpoint.
//! Values: `height` (slot or block), `reference_height`, `lag`.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use vantage_mqtt::{Chain, ChainCheck, IpVersion, Timings};

use super::tls::ProbeTls;
use super::{Outcome, connect, ms};

/// One JSON-RPC call; the `result` field or the error in words.
async fn call(url: &str, method: &str) -> Result<Value, String> {
    let uri: Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or("url has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = connect(&host, port, IpVersion::Any).await?.stream;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).to_string();
    let request = hyper::Request::post(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(
            hyper::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = if https {
        let tls = ProbeTls::new(true, None, vec![b"http/1.1".to_vec()])?;
        let stream = tls.handshake(tcp, &host).await?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    let bytes = Limited::new(response.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| format!("{method}: body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{method}: HTTP {status}"));
    }
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{method}: not JSON-RPC: {e}"))?;
    if let Some(error) = value.get("error") {
        let message = error["message"].as_str().unwrap_or("error");
        return Err(format!("{method}: {message}"));
    }
    value
        .get("result")
        .cloned()
        .ok_or_else(|| format!("{method}: no result"))
}

async fn send<I>(
    io: I,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

fn parse_height(chain: Chain, value: &Value) -> Result<u64, String> {
    match chain {
        Chain::Solana => value
            .as_u64()
            .ok_or_else(|| format!("getSlot returned {value}")),
        Chain::Evm => value
            .as_str()
            .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| format!("eth_blockNumber returned {value}")),
    }
}

async fn height(chain: Chain, url: &str) -> Result<u64, String> {
    let method = match chain {
        Chain::Solana => "getSlot",
        Chain::Evm => "eth_blockNumber",
    };
    parse_height(chain, &call(url, method).await?)
}

/// Runs a chain check.
pub async fn probe(check: &ChainCheck, started: Instant) -> Outcome {
    let rpc_started = Instant::now();
    let health = match check.chain {
        Chain::Solana => call(&check.url, "getHealth").await.and_then(|v| {
            if v == "ok" {
                Ok(())
            } else {
                Err(format!("getHealth: {v}"))
            }
        }),
        Chain::Evm => call(&check.url, "eth_syncing").await.and_then(|v| {
            if v == Value::Bool(false) {
                Ok(())
            } else {
                Err("eth_syncing: the node is syncing".into())
            }
        }),
    };
    if let Err(error) = health {
        return Outcome::fail(error, started);
    }
    let own = match height(check.chain, &check.url).await {
        Ok(own) => own,
        Err(error) => return Outcome::fail(error, started),
    };
    let timings = Timings {
        ttfb_ms: Some(ms(rpc_started.elapsed())),
        ..Timings::default()
    };
    let unit = match check.chain {
        Chain::Solana => "slot",
        Chain::Evm => "block",
    };
    let mut outcome = Outcome::verdict(true, format!("healthy at {unit} {own}"), timings, started);
    outcome.values.insert("height".into(), own as f64);
    if let Some(reference_url) = &check.reference_url {
        let reference = match height(check.chain, reference_url).await {
            Ok(reference) => reference,
            Err(error) => return Outcome::fail(format!("reference: {error}"), started),
        };
        let lag = reference.saturating_sub(own);
        outcome
            .values
            .insert("reference_height".into(), reference as f64);
        outcome.values.insert("lag".into(), lag as f64);
        outcome.reason = format!("{unit} {own}, {lag} behind the reference");
        if check.max_lag.is_some_and(|max| lag > max) {
            outcome.ok = false;
            outcome
                .reason
                .push_str(&format!(" (more than {})", check.max_lag.unwrap_or(0)));
        }
    }
    outcome.timings.total_ms = ms(started.elapsed());
    outcome
}

/// Checks a chain check's fields.
///
/// # Errors
/// A message naming the field.
pub fn validate(check: &ChainCheck) -> Result<(), String> {
    for (field, url) in [
        ("url", Some(&check.url)),
        ("reference_url", check.reference_url.as_ref()),
    ] {
        let Some(url) = url else { continue };
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("{field} {url:?} does not parse"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "{field} must be an http:// or https:// URL with a host"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The JSON-RPC servers here are fakes that answer like Solana and EVM nodes: no chain
    //! can run on this machine.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A fake node: `healthy` decides getHealth / eth_syncing, `height` is its slot/block.
    async fn fake_node(chain: Chain, healthy: bool, height: Arc<AtomicU64>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let height = height.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    let n = stream.read(&mut buffer).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buffer[..n]);
                    let h = height.load(Ordering::Relaxed);
                    let result = if request.contains("getHealth") {
                        if healthy { json!("ok") } else { Value::Null }
                    } else if request.contains("eth_syncing") {
                        if healthy {
                            json!(false)
                        } else {
                            json!({"currentBlock": "0x1"})
                        }
                    } else if request.contains("getSlot") {
                        json!(h)
                    } else {
                        json!(format!("{h:#x}"))
                    };
                    let body = if chain == Chain::Solana && !healthy && request.contains("getHealth") {
                        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "Node is behind by 42 slots"}})
                    } else {
                        json!({"jsonrpc": "2.0", "id": 1, "result": result})
                    }
                    .to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        format!("http://127.0.0.1:{port}/")
    }

    fn check(
        chain: Chain,
        url: String,
        reference_url: Option<String>,
        max_lag: Option<u64>,
    ) -> ChainCheck {
        ChainCheck {
            chain,
            url,
            reference_url,
            max_lag,
        }
    }

    #[tokio::test]
    async fn solana_health_slot_and_lag() {
        let node = fake_node(Chain::Solana, true, Arc::new(AtomicU64::new(1000))).await;
        let reference = fake_node(Chain::Solana, true, Arc::new(AtomicU64::new(1010))).await;
        let sick = fake_node(Chain::Solana, false, Arc::new(AtomicU64::new(1000))).await;
        let outcome = probe(
            &check(Chain::Solana, node.clone(), None, None),
            Instant::now(),
        )
        .await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "healthy at slot 1000");
        let outcome = probe(
            &check(
                Chain::Solana,
                node.clone(),
                Some(reference.clone()),
                Some(20),
            ),
            Instant::now(),
        )
        .await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.values["lag"], 10.0);
        let outcome = probe(
            &check(Chain::Solana, node, Some(reference), Some(5)),
            Instant::now(),
        )
        .await;
        assert!(!outcome.ok);
        assert_eq!(
            outcome.reason,
            "slot 1000, 10 behind the reference (more than 5)"
        );
        let outcome = probe(&check(Chain::Solana, sick, None, None), Instant::now()).await;
        assert_eq!(
            (outcome.ok, outcome.reason.as_str()),
            (false, "getHealth: Node is behind by 42 slots")
        );
    }

    #[tokio::test]
    async fn evm_syncing_block_and_lag() {
        let node = fake_node(Chain::Evm, true, Arc::new(AtomicU64::new(0x10))).await;
        let reference = fake_node(Chain::Evm, true, Arc::new(AtomicU64::new(0x20))).await;
        let syncing = fake_node(Chain::Evm, false, Arc::new(AtomicU64::new(0x10))).await;
        let outcome = probe(
            &check(Chain::Evm, node.clone(), Some(reference), Some(8)),
            Instant::now(),
        )
        .await;
        assert!(!outcome.ok);
        assert_eq!(
            outcome.reason,
            "block 16, 16 behind the reference (more than 8)"
        );
        assert_eq!(outcome.values["height"], 16.0);
        let outcome = probe(&check(Chain::Evm, syncing, None, None), Instant::now()).await;
        assert_eq!(
            (outcome.ok, outcome.reason.as_str()),
            (false, "eth_syncing: the node is syncing")
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let outcome = probe(
            &check(
                Chain::Evm,
                format!("http://127.0.0.1:{closed}/"),
                None,
                None,
            ),
            Instant::now(),
        )
        .await;
        assert!(
            !outcome.ok && outcome.reason.contains("refused"),
            "{}",
            outcome.reason
        );
    }
}
