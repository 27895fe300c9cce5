//! TCP probe: connect time, optional TLS, optional send/expect conversation (enough for the
//! common banner protocols: SSH, SMTP, POP3, IMAP, Redis, …).

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vantage_mqtt::{TcpCheck, TcpStep};

use super::tls::secure;
use super::{Connected, Outcome, connect, regex};

/// Most bytes read while waiting for one `expect` step.
const MAX_EXPECT_BYTES: usize = 64 * 1024;

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    steps: &[TcpStep],
) -> Result<(), String> {
    let mut received = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        match step {
            TcpStep::Send(text) => {
                stream
                    .write_all(text.as_bytes())
                    .await
                    .map_err(|e| format!("step {}: send failed: {e}", index + 1))?;
            }
            TcpStep::Expect(pattern) => {
                let re = regex("expect", pattern)?;
                loop {
                    if re.is_match(&String::from_utf8_lossy(&received)) {
                        received.clear();
                        break;
                    }
                    if received.len() > MAX_EXPECT_BYTES {
                        return Err(format!(
                            "step {}: no match for /{pattern}/ in {MAX_EXPECT_BYTES} bytes",
                            index + 1
                        ));
                    }
                    let mut chunk = [0u8; 4096];
                    let n = stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("step {}: read failed: {e}", index + 1))?;
                    if n == 0 {
                        let got: String = String::from_utf8_lossy(&received)
                            .chars()
                            .take(120)
                            .collect();
                        return Err(format!(
                            "step {}: expected /{pattern}/, connection closed after {got:?}",
                            index + 1
                        ));
                    }
                    received.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    Ok(())
}

/// Runs a TCP check.
pub async fn probe(check: &TcpCheck, started: Instant) -> Outcome {
    let Connected {
        mut stream,
        address,
        mut timings,
    } = match connect(&check.host, check.port, check.ip_version).await {
        Ok(connected) => connected,
        Err(error) => return Outcome::fail(error, started),
    };
    let mut values = std::collections::BTreeMap::new();
    let conversation = if check.tls {
        let name = check.server_name.as_deref().unwrap_or(&check.host);
        let (handshake, facts) = secure(
            stream,
            name,
            check.tls_verify,
            check.ca_pem.as_deref(),
            Vec::new(),
            &mut timings,
        )
        .await;
        if let Some(facts) = facts {
            values.insert("cert_days_left".to_owned(), facts.days_left);
        }
        match handshake {
            Ok(mut secure) => converse(&mut secure, &check.steps).await,
            Err(error) => Err(error),
        }
    } else {
        converse(&mut stream, &check.steps).await
    };
    let mut outcome = match conversation {
        Ok(()) if check.steps.is_empty() => {
            Outcome::verdict(true, format!("connected to {address}"), timings, started)
        }
        Ok(()) => Outcome::verdict(
            true,
            format!("connected to {address}, {} steps passed", check.steps.len()),
            timings,
            started,
        ),
        Err(error) => Outcome::verdict(false, error, timings, started),
    };
    outcome.values = values;
    outcome
}

/// Checks a TCP check's fields.
///
/// # Errors
/// A message naming the field.
pub fn validate(check: &TcpCheck) -> Result<(), String> {
    super::validate_endpoint(
        &check.host,
        check.port,
        check.server_name.as_deref(),
        check.ca_pem.as_deref(),
    )?;
    if check.steps.len() > 32 {
        return Err("steps: at most 32".into());
    }
    for step in &check.steps {
        match step {
            TcpStep::Expect(pattern) => {
                regex("expect", pattern)?;
            }
            TcpStep::Send(text) if text.len() > 4096 => {
                return Err("send: at most 4096 bytes".into());
            }
            TcpStep::Send(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `banner`, answers PING with +PONG, hangs up on idle clients after 200 ms.
    async fn banner_server(banner: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.write_all(banner.as_bytes()).await;
                    let mut buffer = [0u8; 256];
                    let read = tokio::time::timeout(
                        std::time::Duration::from_millis(200),
                        stream.read(&mut buffer),
                    )
                    .await;
                    if let Ok(Ok(n)) = read
                        && buffer[..n].starts_with(b"PING")
                    {
                        let _ = stream.write_all(b"+PONG\r\n").await;
                    }
                    // Idle clients are hung up on, as real servers do.
                });
            }
        });
        port
    }

    fn check(port: u16, steps: Vec<TcpStep>) -> TcpCheck {
        TcpCheck {
            steps,
            ..TcpCheck::connect("127.0.0.1", port)
        }
    }

    #[tokio::test]
    async fn connect_banner_match_mismatch_and_refusal() {
        let port = banner_server("SSH-2.0-OpenSSH_9.2\r\n").await;
        let outcome = probe(&check(port, vec![]), Instant::now()).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.timings.connect_ms.is_some());

        let outcome = probe(
            &check(port, vec![TcpStep::Expect("^SSH-2\\.0-".into())]),
            Instant::now(),
        )
        .await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.reason.ends_with("1 steps passed"));

        let outcome = probe(
            &check(port, vec![TcpStep::Expect("^220 ".into())]),
            Instant::now(),
        )
        .await;
        assert!(!outcome.ok);
        assert!(
            outcome
                .reason
                .starts_with("step 1: expected /^220 /, connection closed after \"SSH-2.0"),
            "{}",
            outcome.reason
        );

        let redis = banner_server("").await;
        let steps = vec![
            TcpStep::Send("PING\r\n".into()),
            TcpStep::Expect("\\+PONG".into()),
        ];
        let outcome = probe(&check(redis, steps), Instant::now()).await;
        assert!(outcome.ok, "{outcome:?}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let outcome = probe(&check(closed, vec![]), Instant::now()).await;
        assert!(!outcome.ok);
        assert!(outcome.reason.contains("refused"), "{}", outcome.reason);
    }
}

#[cfg(test)]
mod timeout_tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_server_runs_into_the_check_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let check = vantage_mqtt::CheckSpec {
            id: "silent".into(),
            interval_s: 60,
            timeout_ms: 400,
            kind: vantage_mqtt::CheckKind::Tcp(TcpCheck {
                steps: vec![TcpStep::Expect("^220".into())],
                ..TcpCheck::connect("127.0.0.1", port)
            }),
        };
        let outcome = crate::probe::run_check(&check).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "timed out after 400 ms");
        drop(listener);
    }
}
