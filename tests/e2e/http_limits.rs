//! The HTTPS listener's limits: a connection cap, TLS handshake, request-head and idle
//! timeouts, each counted on `/metrics`, while the API keeps answering and live feeds stay up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use vantage_tests::{Backend, ControlPlane, TestStore, wait_for};

/// Connections held idle by the test.
const N_HELD: usize = 500;
/// The cap the control plane runs with: the held connections plus a few.
const CAP: usize = 520;
/// Every HTTP timeout the control plane runs with, long enough to open the held ones.
const TIMEOUT: Duration = Duration::from_secs(12);

fn connector(cp: &ControlPlane) -> anyhow::Result<TlsConnector> {
    let tls = vantage_agent::tls::pinned_client(&cp.ca_pem)?;
    Ok(TlsConnector::from(Arc::new(tls)))
}

/// A TLS connection to the API that has sent nothing.
async fn open_tls(cp: &ControlPlane, tls: &TlsConnector) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", cp.http_port)).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    Ok(tls.connect(name, tcp).await?)
}

/// Sends one HTTP/1.1 keep-alive request for `/healthz` and reads its whole answer.
async fn healthz(stream: &mut TlsStream<TcpStream>) -> anyhow::Result<()> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let n = stream.read(&mut buffer).await?;
        anyhow::ensure!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .context("no content-length")?
                .parse()?;
            if body.len() >= length {
                return Ok(());
            }
        }
    }
}

/// Reads until the server closes the connection; true for a clean end (EOF, or a TLS peer
/// that closed without close_notify), false for anything else (data, another error).
async fn wait_closed<S: AsyncRead + Unpin>(mut stream: S) -> bool {
    let mut buffer = [0u8; 256];
    match stream.read(&mut buffer).await {
        Ok(0) => true,
        Err(error) => error.kind() == std::io::ErrorKind::UnexpectedEof,
        Ok(_) => false,
    }
}

async fn metric(cp: &ControlPlane, line: &str) -> anyhow::Result<u64> {
    wait_for(line, Duration::from_secs(10), || async {
        cp.counter(line).await.ok()
    })
    .await
}

crate::both_backends!(
    held_connections_are_capped_and_timed_out,
    held_connections_are_capped_and_timed_out
);

async fn held_connections_are_capped_and_timed_out(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let timeout_ms = TIMEOUT.as_millis().to_string();
    let cp = ControlPlane::start_with(
        &store,
        &[
            ("VANTAGE_HTTP_MAX_CONNECTIONS", &CAP.to_string()),
            ("VANTAGE_HTTP_HANDSHAKE_TIMEOUT_MS", &timeout_ms),
            ("VANTAGE_HTTP_HEADER_TIMEOUT_MS", &timeout_ms),
            ("VANTAGE_HTTP_IDLE_TIMEOUT_MS", &timeout_ms),
        ],
    )
    .await?;
    let tls = connector(&cp)?;

    // Live feeds, opened first: they must outlive every timer.
    let mut websocket = cp.live_socket("kind=result").await?;
    let mut sse = cp
        .client
        .get(cp.url("/api/v1/live"))
        .bearer_auth(&cp.admin_token)
        .send()
        .await?;
    anyhow::ensure!(sse.status() == 200, "SSE: {}", sse.status());

    // Half the held connections only finish the TLS handshake; half also make one request
    // and then sit idle on keep-alive.
    let started = Instant::now();
    let held: Vec<(bool, TlsStream<TcpStream>)> =
        futures_util::stream::iter((0..N_HELD).map(|i| {
            let (cp, tls) = (&cp, &tls);
            async move {
                let mut stream = open_tls(cp, tls).await?;
                let served = i % 2 == 1;
                if served {
                    healthz(&mut stream).await?;
                }
                anyhow::Ok((served, stream))
            }
        }))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let opened_in = started.elapsed();
    anyhow::ensure!(
        opened_in < TIMEOUT / 2,
        "opening {N_HELD} connections took {opened_in:?}: too slow for a {TIMEOUT:?} timeout"
    );
    // A slow request head after a served request, and a client that never starts TLS.
    let mut slow_head = open_tls(&cp, &tls).await?;
    healthz(&mut slow_head).await?;
    slow_head
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await?;
    slow_head.flush().await?;
    let no_tls = TcpStream::connect(("127.0.0.1", cp.http_port)).await?;
    let closers: Vec<_> = held
        .into_iter()
        .map(|(served, stream)| {
            tokio::spawn(async move { (served, wait_closed(stream).await, Instant::now()) })
        })
        .collect();
    let slow_head = tokio::spawn(wait_closed(slow_head));
    let no_tls = tokio::spawn(wait_closed(no_tls));

    // With all of them held, a new client's API call still answers within 1 s.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cp.ca_pem.as_bytes())?)
        .use_rustls_tls()
        .build()?;
    let asked = Instant::now();
    let response = client
        .get(cp.url("/api/v1/agents"))
        .bearer_auth(&cp.admin_token)
        .send()
        .await?;
    let status = response.status();
    let _ = response.bytes().await?;
    let latency = asked.elapsed();
    assert_eq!(status, 200);
    assert!(
        latency < Duration::from_secs(1),
        "an API call took {latency:?} with {N_HELD} idle connections held"
    );
    let open = metric(&cp, "vantage_http_connections_open").await?;
    assert!(
        open as usize >= N_HELD + 4,
        "open-connections gauge {open} with {N_HELD} held"
    );
    assert!(
        closers.iter().all(|c| !c.is_finished()),
        "a held connection closed before its timeout"
    );

    // Past the cap, connections are closed at once (long before any timeout).
    let mut extra = Vec::new();
    for _ in 0..(CAP + 10).saturating_sub(open as usize) {
        extra.push(TcpStream::connect(("127.0.0.1", cp.http_port)).await?);
    }
    let mut n_refused = 0;
    for stream in &mut extra {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await
        {
            n_refused += 1;
        }
    }
    drop(extra);
    assert!(n_refused >= 1, "no connection was refused past the cap");
    let refused = metric(
        &cp,
        "vantage_http_refused_total{reason=\"connection_limit\"}",
    )
    .await?;
    assert!(
        refused >= n_refused,
        "{refused} counted, {n_refused} seen refused"
    );

    // The server closes every held connection on its timer: reads see EOF.
    let deadline = started + TIMEOUT * 2 + Duration::from_secs(10);
    let mut n_served = 0;
    for closer in closers {
        let (served, clean, closed_at) =
            tokio::time::timeout_at(deadline.into(), closer)
                .await
                .context("a held connection is still open past its timeout")??;
        assert!(
            clean,
            "a held connection ended with something other than EOF"
        );
        assert!(
            closed_at >= started + TIMEOUT,
            "a held connection closed before its timeout"
        );
        n_served += usize::from(served);
    }
    assert!(
        tokio::time::timeout_at(deadline.into(), slow_head).await??,
        "the slow request head was not closed cleanly"
    );
    assert!(
        tokio::time::timeout_at(deadline.into(), no_tls).await??,
        "the silent TCP client was not closed cleanly"
    );

    let idle = metric(&cp, "vantage_http_idle_closed_total").await?;
    let header = metric(&cp, "vantage_http_refused_total{reason=\"header_timeout\"}").await?;
    let handshake = metric(&cp, "vantage_http_refused_total{reason=\"tls_timeout\"}").await?;
    assert!(
        idle >= n_served as u64,
        "idle closed {idle}, {n_served} served"
    );
    assert!(
        header > (N_HELD - n_served) as u64,
        "header timeouts {header}: {} silent and one slow head",
        N_HELD - n_served
    );
    assert!(handshake >= 1, "handshake timeouts {handshake}");
    let open = metric(&cp, "vantage_http_connections_open").await?;
    assert!(
        open <= 6,
        "{open} connections still open after the timeouts"
    );

    // The live feeds outlived every timer: the WebSocket answers a ping, the SSE stream is
    // neither ended nor broken.
    websocket
        .send(tokio_tungstenite::tungstenite::Message::Ping(
            b"still there".to_vec().into(),
        ))
        .await?;
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(message) = websocket.next().await {
            if let tokio_tungstenite::tungstenite::Message::Pong(data) = message? {
                return anyhow::Ok(data);
            }
        }
        anyhow::bail!("the WebSocket closed")
    })
    .await
    .context("no pong")??;
    assert_eq!(&pong[..], b"still there");
    match tokio::time::timeout(Duration::from_millis(500), sse.chunk()).await {
        Err(_) | Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => anyhow::bail!("the SSE stream was ended"),
        Ok(Err(error)) => anyhow::bail!("the SSE stream broke: {error}"),
    }
    Ok(())
}

/// The per-address rate limit: past the burst, requests get a JSON 429 at once and are
/// counted; the bucket refills at the set rate, so the client gets answers again. The store
/// plays no part, so this runs on SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_rate_limit_get_429_and_are_counted() -> anyhow::Result<()> {
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start_with(
        &store,
        &[
            ("VANTAGE_API_RATE_PER_S", "2"),
            ("VANTAGE_API_RATE_BURST", "5"),
        ],
    )
    .await?;
    // Let the bucket fill after the harness's own start-up calls.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..20 {
        let (status, body) = cp.get("/api/v1/checks").await?;
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                limited += 1;
            }
            other => anyhow::bail!("unexpected {other}: {body}"),
        }
    }
    assert!((5..=7).contains(&ok), "{ok} answered past a burst of 5");
    assert_eq!(ok + limited, 20);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = cp.get("/api/v1/checks").await?;
    assert_eq!(status, 200, "the bucket did not refill");
    let counted = cp.counter("vantage_api_rate_limited_total").await?;
    assert!(counted >= limited, "{counted} counted, {limited} refused");
    Ok(())
}
