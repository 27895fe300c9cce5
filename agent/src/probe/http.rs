//! HTTP(S) probe: one request, status verdict, phase timings (dns, connect, tls, ttfb,
//! transfer). The body is read up to a limit so a huge or endless body cannot exhaust memory.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use vantage_mqtt::Timings;

use super::{Outcome, ms};

/// Most body bytes read per request.
pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;

fn public_tls() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| crate::tls::public_client().ok().map(Arc::new))
        .clone()
}

/// Requests `url` with `method`; passes when the status is in `expect_status` (200-399 when
/// empty).
pub async fn probe(url: &str, method: &str, expect_status: &[u16], started: Instant) -> Outcome {
    let uri: Uri = match url.parse() {
        Ok(uri) => uri,
        Err(error) => {
            return Outcome::fail(format!("url {url:?} does not parse: {error}"), started);
        }
    };
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Outcome::fail(format!("url {url:?} is not http or https"), started),
    };
    let Some(host) = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
    else {
        return Outcome::fail(format!("url {url:?} has no host"), started);
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addresses = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addresses) => addresses.collect::<Vec<_>>(),
        Err(error) => return Outcome::fail(format!("cannot resolve {host}: {error}"), started),
    };
    let mut timings = Timings {
        dns_ms: Some(ms(started.elapsed())),
        ..Timings::default()
    };
    let connect_started = Instant::now();
    let mut tcp = None;
    let mut last_error = format!("{host} resolved to no address");
    for address in &addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(error) => last_error = format!("connect to {address} failed: {error}"),
        }
    }
    let Some(tcp) = tcp else {
        return Outcome::fail(last_error, started);
    };
    let _ = tcp.set_nodelay(true);
    timings.connect_ms = Some(ms(connect_started.elapsed()));
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let request = match hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("vantage-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
    {
        Ok(request) => request,
        Err(error) => return Outcome::fail(format!("cannot build request: {error}"), started),
    };
    let request_started;
    let response = if https {
        let Some(config) = public_tls() else {
            return Outcome::fail("TLS client configuration unavailable", started);
        };
        let tls_started = Instant::now();
        let server_name = match rustls::pki_types::ServerName::try_from(host.clone()) {
            Ok(name) => name,
            Err(error) => return Outcome::fail(format!("bad TLS name {host}: {error}"), started),
        };
        let stream = match tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
        {
            Ok(stream) => stream,
            Err(error) => return Outcome::fail(format!("TLS handshake failed: {error}"), started),
        };
        timings.tls_ms = Some(ms(tls_started.elapsed()));
        request_started = Instant::now();
        send(TokioIo::new(stream), request).await
    } else {
        request_started = Instant::now();
        send(TokioIo::new(tcp), request).await
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => return Outcome::fail(format!("request failed: {error}"), started),
    };
    timings.ttfb_ms = Some(ms(request_started.elapsed()));
    let status = response.status().as_u16();
    let transfer_started = Instant::now();
    let body = Limited::new(response.into_body(), BODY_LIMIT_BYTES)
        .collect()
        .await;
    timings.transfer_ms = Some(ms(transfer_started.elapsed()));
    timings.total_ms = ms(started.elapsed());
    if let Err(error) = body {
        return Outcome {
            ok: false,
            reason: format!("status {status}, body read failed: {error}"),
            timings,
            status_code: Some(status),
        };
    }
    let ok = if expect_status.is_empty() {
        (200..400).contains(&status)
    } else {
        expect_status.contains(&status)
    };
    Outcome {
        ok,
        reason: if ok {
            format!("status {status}")
        } else {
            format!("unexpected status {status}")
        },
        timings,
        status_code: Some(status),
    }
}

async fn send<I>(
    io: I,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    sender.send_request(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(status: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 2048];
                let _ = stream.read(&mut buffer).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn status_decides_the_verdict() {
        let ok = server("200 OK").await;
        let outcome = probe(
            &format!("http://127.0.0.1:{ok}/x"),
            "GET",
            &[],
            Instant::now(),
        )
        .await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.status_code, Some(200));
        assert!(outcome.timings.ttfb_ms.is_some() && outcome.timings.connect_ms.is_some());

        let missing = server("404 Not Found").await;
        let outcome = probe(
            &format!("http://127.0.0.1:{missing}/"),
            "GET",
            &[],
            Instant::now(),
        )
        .await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "unexpected status 404");
        let outcome = probe(
            &format!("http://127.0.0.1:{missing}/"),
            "GET",
            &[404],
            Instant::now(),
        )
        .await;
        assert!(outcome.ok, "404 expected explicitly");
    }

    #[tokio::test]
    async fn refused_connection_fails_with_the_reason() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let outcome = probe(
            &format!("http://127.0.0.1:{port}/"),
            "GET",
            &[],
            Instant::now(),
        )
        .await;
        assert!(!outcome.ok);
        assert!(outcome.reason.contains("refused"), "{}", outcome.reason);
    }
}
