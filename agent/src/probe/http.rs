//! HTTP(S) probe: one request (following redirects up to a limit), HTTP/1.1 or HTTP/2,
//! IPv4/IPv6 preference over every resolved address, TLS verification on or off with a
//! custom CA and SNI override, phase timings (dns, connect, tls, ttfb, transfer, total) of
//! the final hop, and assertions on status, body, JSON, headers, duration and certificate.
//! The body is read up to a limit so a huge or endless body cannot exhaust memory.

use std::collections::HashSet;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use vantage_mqtt::{HttpAssertion, HttpCheck, HttpVersion, Timings};

use super::tls::secure;
use super::{Connected, Outcome, connect, ms, regex, valid_host};

/// What one hop returned.
struct Hop {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
    timings: Timings,
    cert_days_left: Option<f64>,
    http_version: &'static str,
}

fn version_name(version: hyper::Version) -> &'static str {
    match version {
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

async fn read_body(mut body: Incoming, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body read failed: {e}"))?;
        if let Some(data) = frame.data_ref() {
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
            if out.len() >= limit {
                // Enough for the assertions; the rest is not read.
                break;
            }
        }
    }
    Ok(out)
}

async fn send<I>(
    io: I,
    http2: bool,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))
    }
}

async fn hop(check: &HttpCheck, uri: &Uri, method: &str) -> Result<Hop, String> {
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or_else(|| format!("{uri} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let Connected {
        stream: tcp,
        mut timings,
        ..
    } = connect(&host, port, check.ip_version).await?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or(host.clone());
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(
            hyper::header::USER_AGENT,
            concat!("vantage-agent/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &check.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body = Full::new(Bytes::from(check.body.clone().unwrap_or_default()));
    let mut cert_days_left = None;
    let response;
    let request_started;
    if https {
        let alpn = match check.http_version {
            HttpVersion::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
            HttpVersion::Http2 => vec![b"h2".to_vec()],
        };
        let name = check.server_name.as_deref().unwrap_or(&host);
        let (handshake, facts) = secure(
            tcp,
            name,
            check.tls_verify,
            check.ca_pem.as_deref(),
            alpn,
            &mut timings,
        )
        .await;
        cert_days_left = facts.map(|f| f.days_left);
        let stream = handshake?;
        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if check.http_version == HttpVersion::Http2 && !http2 {
            return Err("the server does not speak HTTP/2 (no h2 in ALPN)".into());
        }
        let request = if http2 {
            builder.uri(uri.clone()).body(body)
        } else {
            builder.header(hyper::header::HOST, &authority).body(body)
        }
        .map_err(|e| format!("cannot build the request: {e}"))?;
        request_started = Instant::now();
        response = send(TokioIo::new(stream), http2, request).await?;
    } else {
        let http2 = check.http_version == HttpVersion::Http2;
        let request = if http2 {
            builder.uri(uri.clone()).body(body)
        } else {
            builder.header(hyper::header::HOST, &authority).body(body)
        }
        .map_err(|e| format!("cannot build the request: {e}"))?;
        request_started = Instant::now();
        response = send(TokioIo::new(tcp), http2, request).await?;
    }
    timings.ttfb_ms = Some(ms(request_started.elapsed()));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let http_version = version_name(response.version());
    let transfer_started = Instant::now();
    let body = read_body(response.into_body(), check.body_limit_bytes as usize).await?;
    timings.transfer_ms = Some(ms(transfer_started.elapsed()));
    Ok(Hop {
        status,
        headers,
        body,
        timings,
        cert_days_left,
        http_version,
    })
}

fn status_ok(check: &HttpCheck, status: u16) -> bool {
    if check.expect_status.is_empty() && check.expect_status_ranges.is_empty() {
        return (200..400).contains(&status);
    }
    check.expect_status.contains(&status)
        || check
            .expect_status_ranges
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&status))
}

/// The first assertion that fails, in words.
fn failed_assertion(check: &HttpCheck, hop: &Hop, total_ms: f64) -> Option<String> {
    let body = String::from_utf8_lossy(&hop.body);
    for assertion in &check.assertions {
        let failure = match assertion {
            HttpAssertion::BodyContains(text) => {
                (!body.contains(text.as_str())).then(|| format!("body does not contain {text:?}"))
            }
            HttpAssertion::BodyNotContains(text) => body
                .contains(text.as_str())
                .then(|| format!("body contains {text:?}")),
            HttpAssertion::BodyMatches(pattern) => match regex("body_matches", pattern) {
                Ok(re) => (!re.is_match(&body)).then(|| format!("body does not match /{pattern}/")),
                Err(error) => Some(error),
            },
            HttpAssertion::JsonPointer { pointer, equals } => {
                match serde_json::from_slice::<serde_json::Value>(&hop.body) {
                    Err(_) => Some("body is not JSON".to_owned()),
                    Ok(json) => match json.pointer(pointer) {
                        None => Some(format!("JSON has nothing at {pointer}")),
                        Some(found) if found != equals => {
                            Some(format!("JSON at {pointer} is {found}, expected {equals}"))
                        }
                        Some(_) => None,
                    },
                }
            }
            HttpAssertion::Header { name, matches } => match hop.headers.get(name.as_str()) {
                None => Some(format!("no {name} header")),
                Some(value) => match regex("matches", matches) {
                    Ok(re) => {
                        let text = String::from_utf8_lossy(value.as_bytes());
                        (!re.is_match(&text))
                            .then(|| format!("header {name}: {text:?} does not match /{matches}/"))
                    }
                    Err(error) => Some(error),
                },
            },
            HttpAssertion::MaxDurationMs(limit) => (total_ms > f64::from(*limit))
                .then(|| format!("took {total_ms:.0} ms, more than {limit} ms")),
            HttpAssertion::CertDaysLeft(min) => match hop.cert_days_left {
                None => Some("no certificate (not HTTPS)".to_owned()),
                Some(days) if days < f64::from(*min) => Some(format!(
                    "certificate expires in {days} days (minimum {min})"
                )),
                Some(_) => None,
            },
        };
        if failure.is_some() {
            return failure;
        }
    }
    None
}

/// Runs an HTTP check.
pub async fn probe(check: &HttpCheck, started: Instant) -> Outcome {
    let mut uri: Uri = match check.url.parse() {
        Ok(uri) => uri,
        Err(error) => {
            return Outcome::fail(
                format!("url {:?} does not parse: {error}", check.url),
                started,
            );
        }
    };
    let mut method = check.method.clone();
    let mut visited = HashSet::new();
    let mut redirects = 0u8;
    loop {
        visited.insert(uri.to_string());
        let hop = match hop(check, &uri, &method).await {
            Ok(hop) => hop,
            Err(error) => return Outcome::fail(error, started),
        };
        let location = hop
            .headers
            .get(hyper::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        if check.follow_redirects && (300..400).contains(&hop.status) && hop.status != 304 {
            let Some(location) = location else {
                return Outcome::fail(
                    format!("status {} without a Location header", hop.status),
                    started,
                );
            };
            let next = match resolve_location(&uri, &location) {
                Ok(next) => next,
                Err(error) => return Outcome::fail(error, started),
            };
            if visited.contains(&next.to_string()) {
                return Outcome::fail(format!("redirect loop at {next}"), started);
            }
            if redirects >= check.max_redirects {
                return Outcome::fail(
                    format!("more than {} redirects", check.max_redirects),
                    started,
                );
            }
            redirects += 1;
            if hop.status == 303 || ((hop.status == 301 || hop.status == 302) && method == "POST") {
                method = "GET".to_owned();
            }
            uri = next;
            continue;
        }
        let mut timings = hop.timings.clone();
        timings.total_ms = ms(started.elapsed());
        let mut outcome = Outcome::verdict(false, String::new(), timings.clone(), started);
        outcome.status_code = Some(hop.status);
        outcome
            .values
            .insert("body_bytes".into(), hop.body.len() as f64);
        outcome
            .values
            .insert("redirects".into(), f64::from(redirects));
        if let Some(days) = hop.cert_days_left {
            outcome.values.insert("cert_days_left".into(), days);
        }
        if !status_ok(check, hop.status) {
            outcome.reason = format!("unexpected status {}", hop.status);
        } else if let Some(failure) = failed_assertion(check, &hop, timings.total_ms) {
            outcome.reason = failure;
        } else {
            outcome.ok = true;
            outcome.reason = format!("status {} ({})", hop.status, hop.http_version);
        }
        return outcome;
    }
}

fn resolve_location(base: &Uri, location: &str) -> Result<Uri, String> {
    if let Ok(absolute) = location.parse::<Uri>()
        && absolute.scheme().is_some()
    {
        return Ok(absolute);
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let base_path = base.path();
        let dir = &base_path[..base_path.rfind('/').map(|i| i + 1).unwrap_or(0)];
        format!("{dir}{location}")
    };
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|_| format!("redirect to an invalid location {location:?}"))
}

/// Checks an HTTP check's fields.
///
/// # Errors
/// A message naming the field.
pub fn validate(check: &HttpCheck) -> Result<(), String> {
    let uri: Uri = check
        .url
        .parse()
        .map_err(|_| format!("url {:?} does not parse", check.url))?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.host().is_none_or(|h| !valid_host(h))
    {
        return Err("url must be http:// or https:// with a host".into());
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "url must not carry credentials (user:password@): put them in a header, which only admins and operators can read"
                .into(),
        );
    }
    if !matches!(
        check.method.as_str(),
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH"
    ) {
        return Err(format!("method {:?} is not supported", check.method));
    }
    for (name, value) in &check.headers {
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || hyper::header::HeaderValue::from_str(value).is_err()
        {
            return Err(format!("headers: {name:?} is not a valid header"));
        }
    }
    if check.body.as_ref().is_some_and(|b| b.len() > 64 * 1024) {
        return Err("body: at most 64 KiB".into());
    }
    if let Some(bad) = check
        .expect_status
        .iter()
        .find(|s| !(100..=599).contains(*s))
    {
        return Err(format!("expect_status {bad} is not an HTTP status"));
    }
    if check
        .expect_status_ranges
        .iter()
        .any(|(from, to)| from > to || *from < 100 || *to > 599)
    {
        return Err("expect_status_ranges must be [from, to] within 100..=599".into());
    }
    if check.max_redirects > 30 {
        return Err("max_redirects must be at most 30".into());
    }
    if !(1..=64 * 1024 * 1024).contains(&check.body_limit_bytes) {
        return Err("body_limit_bytes must be 1..=67108864".into());
    }
    if let Some(name) = &check.server_name
        && rustls::pki_types::ServerName::try_from(name.clone()).is_err()
    {
        return Err("server_name is not a valid TLS name".into());
    }
    if let Some(pem) = &check.ca_pem {
        crate::tls::roots(pem).map_err(|_| "ca_pem holds no valid certificate".to_owned())?;
    }
    for assertion in &check.assertions {
        match assertion {
            HttpAssertion::BodyMatches(pattern) => {
                regex("body_matches", pattern)?;
            }
            HttpAssertion::Header { name, matches } => {
                hyper::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("header assertion: {name:?} is not a header name"))?;
                regex("matches", matches)?;
            }
            HttpAssertion::JsonPointer { pointer, .. }
                if !pointer.is_empty() && !pointer.starts_with('/') =>
            {
                return Err("json_pointer: pointer must be empty or start with /".into());
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, KeyPair};
    use vantage_mqtt::{CheckKind, CheckSpec, IpVersion};

    use super::*;
    use crate::probe::testutil::{leaf, pki, server, server_on};

    async fn run(check: HttpCheck) -> Outcome {
        probe(&check, Instant::now()).await
    }

    #[tokio::test]
    async fn status_codes_decide_the_verdict() {
        let port = server(None).await;
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let ok = run(HttpCheck::get(url("/ok"))).await;
        assert!(ok.ok, "{ok:?}");
        assert_eq!(ok.reason, "status 200 (HTTP/1.1)");
        for phase in [
            ok.timings.dns_ms,
            ok.timings.connect_ms,
            ok.timings.ttfb_ms,
            ok.timings.transfer_ms,
        ] {
            assert!(phase.is_some(), "{:?}", ok.timings);
        }
        let missing = run(HttpCheck::get(url("/missing"))).await;
        assert_eq!(
            (missing.ok, missing.reason.as_str()),
            (false, "unexpected status 404")
        );
        let error = run(HttpCheck::get(url("/error"))).await;
        assert_eq!(
            (error.ok, error.reason.as_str()),
            (false, "unexpected status 500")
        );
        let expected = run(HttpCheck {
            expect_status: vec![404],
            ..HttpCheck::get(url("/missing"))
        })
        .await;
        assert!(expected.ok);
        let ranged = run(HttpCheck {
            expect_status_ranges: vec![(500, 599)],
            ..HttpCheck::get(url("/error"))
        })
        .await;
        assert!(ranged.ok);
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = run(HttpCheck::get(format!("http://127.0.0.1:{closed}/"))).await;
        assert!(
            !refused.ok && refused.reason.contains("refused"),
            "{}",
            refused.reason
        );
    }

    #[tokio::test]
    async fn ip_version_picks_the_family_and_any_tries_every_address() {
        // `localhost` resolves to ::1 and 127.0.0.1; each server listens on one of them.
        let with = |url: &str, ip_version| HttpCheck {
            ip_version,
            ..HttpCheck::get(url.to_owned())
        };
        let v4_port = server(None).await;
        let v4_url = format!("http://localhost:{v4_port}/ok");
        let any = run(with(&v4_url, IpVersion::Any)).await;
        assert!(any.ok, "Any must fall through to 127.0.0.1: {}", any.reason);
        let v4 = run(with(&v4_url, IpVersion::Ipv4)).await;
        assert!(v4.ok, "{}", v4.reason);
        let v6 = run(with(&v4_url, IpVersion::Ipv6)).await;
        assert!(!v6.ok, "{}", v6.reason);
        assert!(
            v6.reason.contains(&format!("[::1]:{v4_port}")) && !v6.reason.contains("127.0.0.1"),
            "{}",
            v6.reason
        );

        let v6_port = server_on("[::1]:0", None).await;
        let v6_url = format!("http://localhost:{v6_port}/ok");
        let v6 = run(with(&v6_url, IpVersion::Ipv6)).await;
        assert!(v6.ok, "{}", v6.reason);
        let any = run(with(&v6_url, IpVersion::Any)).await;
        assert!(any.ok, "{}", any.reason);
        let v4 = run(with(&v6_url, IpVersion::Ipv4)).await;
        assert!(!v4.ok, "{}", v4.reason);
        assert!(
            v4.reason.contains(&format!("127.0.0.1:{v6_port}")) && !v4.reason.contains("::1"),
            "{}",
            v4.reason
        );

        // Nothing listens on either: Any names both failures.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let both = run(with(&format!("http://localhost:{closed}/"), IpVersion::Any)).await;
        assert!(!both.ok);
        assert!(
            both.reason.contains("127.0.0.1") && both.reason.contains("[::1]"),
            "{}",
            both.reason
        );
    }

    #[tokio::test]
    async fn redirects_are_followed_limited_and_loops_caught() {
        let port = server(None).await;
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let chain = run(HttpCheck::get(url("/redirect/3"))).await;
        assert!(chain.ok, "{chain:?}");
        assert_eq!(chain.values["redirects"], 4.0);
        let limited = run(HttpCheck {
            max_redirects: 2,
            ..HttpCheck::get(url("/redirect/3"))
        })
        .await;
        assert_eq!(limited.reason, "more than 2 redirects");
        let not_followed = run(HttpCheck {
            follow_redirects: false,
            ..HttpCheck::get(url("/redirect/3"))
        })
        .await;
        assert_eq!(
            (not_followed.ok, not_followed.status_code),
            (true, Some(302))
        );
        let looping = run(HttpCheck::get(url("/loop"))).await;
        assert!(!looping.ok);
        assert!(
            looping.reason.starts_with("redirect loop at"),
            "{}",
            looping.reason
        );
    }

    #[tokio::test]
    async fn body_json_header_and_duration_assertions() {
        let port = server(None).await;
        let check = |assertions: Vec<HttpAssertion>| HttpCheck {
            assertions,
            ..HttpCheck::get(format!("http://127.0.0.1:{port}/ok"))
        };
        let cases: Vec<(HttpAssertion, Option<&str>)> = vec![
            (HttpAssertion::BodyContains("up".into()), None),
            (
                HttpAssertion::BodyContains("down".into()),
                Some("body does not contain \"down\""),
            ),
            (HttpAssertion::BodyNotContains("error".into()), None),
            (
                HttpAssertion::BodyNotContains("status".into()),
                Some("body contains \"status\""),
            ),
            (
                HttpAssertion::BodyMatches("\"version\":\\s*\\d+".into()),
                None,
            ),
            (
                HttpAssertion::BodyMatches("^<html".into()),
                Some("body does not match /^<html/"),
            ),
            (
                HttpAssertion::JsonPointer {
                    pointer: "/status".into(),
                    equals: serde_json::json!("up"),
                },
                None,
            ),
            (
                HttpAssertion::JsonPointer {
                    pointer: "/version".into(),
                    equals: serde_json::json!(4),
                },
                Some("JSON at /version is 3, expected 4"),
            ),
            (
                HttpAssertion::Header {
                    name: "content-type".into(),
                    matches: "json$".into(),
                },
                None,
            ),
            (
                HttpAssertion::Header {
                    name: "x-missing".into(),
                    matches: ".".into(),
                },
                Some("no x-missing header"),
            ),
            (HttpAssertion::MaxDurationMs(5000), None),
            (
                HttpAssertion::CertDaysLeft(1),
                Some("no certificate (not HTTPS)"),
            ),
        ];
        for (assertion, failure) in cases {
            let outcome = run(check(vec![assertion.clone()])).await;
            match failure {
                None => assert!(outcome.ok, "{assertion:?}: {}", outcome.reason),
                Some(reason) => {
                    assert!(!outcome.ok, "{assertion:?} passed");
                    assert_eq!(outcome.reason, reason, "{assertion:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn certificates_valid_expired_wrong_name_and_self_signed() {
        let pki = pki();
        let valid = server(Some(leaf(&pki, &["localhost", "127.0.0.1"], -1, 30))).await;
        let expired = server(Some(leaf(&pki, &["localhost", "127.0.0.1"], -30, -1))).await;
        let wrong = server(Some(leaf(&pki, &["wrong.example"], -1, 30))).await;
        let own_key = KeyPair::generate().unwrap();
        let own = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&own_key)
            .unwrap();
        let self_signed = server(Some((own.pem(), own_key.serialize_pem()))).await;
        let with_ca = |port: u16| HttpCheck {
            ca_pem: Some(pki.ca_pem.clone()),
            ..HttpCheck::get(format!("https://127.0.0.1:{port}/ok"))
        };

        let outcome = run(HttpCheck {
            assertions: vec![HttpAssertion::CertDaysLeft(20)],
            ..with_ca(valid)
        })
        .await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "status 200 (HTTP/2)");
        assert!(outcome.timings.tls_ms.is_some());
        assert!(
            (28.0..=30.0).contains(&outcome.values["cert_days_left"]),
            "{:?}",
            outcome.values
        );
        let soon = run(HttpCheck {
            assertions: vec![HttpAssertion::CertDaysLeft(60)],
            ..with_ca(valid)
        })
        .await;
        assert!(
            !soon.ok
                && soon.reason.starts_with("certificate expires in ")
                && soon.reason.ends_with("(minimum 60)"),
            "{}",
            soon.reason
        );
        let http1 = run(HttpCheck {
            http_version: HttpVersion::Http1,
            ..with_ca(valid)
        })
        .await;
        assert_eq!(http1.reason, "status 200 (HTTP/1.1)");
        let sni = run(HttpCheck {
            server_name: Some("localhost".into()),
            ..with_ca(valid)
        })
        .await;
        assert!(sni.ok, "{sni:?}");

        let outcome = run(with_ca(expired)).await;
        assert!(
            !outcome.ok && outcome.reason.starts_with("certificate expired"),
            "{}",
            outcome.reason
        );
        assert!(outcome.values.is_empty() || outcome.values["cert_days_left"] < 0.0);
        let outcome = run(with_ca(wrong)).await;
        assert!(
            !outcome.ok
                && outcome
                    .reason
                    .starts_with("certificate not valid for the name"),
            "{}",
            outcome.reason
        );
        let outcome = run(HttpCheck::get(format!(
            "https://127.0.0.1:{self_signed}/ok"
        )))
        .await;
        assert!(
            !outcome.ok && outcome.reason.starts_with("certificate issuer not trusted"),
            "{}",
            outcome.reason
        );
        let outcome = run(HttpCheck {
            tls_verify: false,
            ..HttpCheck::get(format!("https://127.0.0.1:{self_signed}/ok"))
        })
        .await;
        assert!(outcome.ok, "verification off: {outcome:?}");
    }

    #[tokio::test]
    async fn slow_bodies_hit_the_timeout_and_big_bodies_the_limit() {
        let port = server(None).await;
        let check = CheckSpec {
            id: "slow".into(),
            interval_s: 60,
            timeout_ms: 500,
            kind: CheckKind::Http(HttpCheck::get(format!("http://127.0.0.1:{port}/slow"))),
        };
        let started = Instant::now();
        let outcome = crate::probe::run_check(&check).await;
        let elapsed = started.elapsed();
        assert_eq!(outcome.reason, "timed out after 500 ms");
        assert!(
            elapsed >= Duration::from_millis(500) && elapsed <= Duration::from_millis(550),
            "{elapsed:?} for a 500 ms timeout"
        );
        let big = run(HttpCheck {
            body_limit_bytes: 1024,
            ..HttpCheck::get(format!("http://127.0.0.1:{port}/big"))
        })
        .await;
        assert!(big.ok, "{big:?}");
        assert_eq!(big.values["body_bytes"], 1024.0);
    }
}
