//! SMTP probe: banner 220, EHLO, optionally STARTTLS with a certificate check, QUIT; the
//! time of each stage is reported (`banner_ms`, `ehlo_ms`, `starttls_ms`, `tls_ms`).

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vantage_mqtt::{IpVersion, SmtpCheck};

use super::tls::secure;
use super::{Connected, Outcome, connect, ms};

/// Most bytes of one SMTP reply.
const MAX_REPLY_BYTES: usize = 16 * 1024;

/// Reads one (possibly multi-line) SMTP reply: its code and text.
///
/// # Errors
/// A closed connection, an oversize or malformed reply.
pub async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u16, String), String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.len() > MAX_REPLY_BYTES {
            return Err("reply too long".into());
        }
        let text = String::from_utf8_lossy(&buffer);
        if !text.ends_with("\r\n") && !text.ends_with('\n') {
            continue;
        }
        if let Some(bad) = text
            .lines()
            .find(|line| line.len() < 3 || !line.as_bytes()[..3].iter().all(u8::is_ascii_digit))
        {
            return Err(format!(
                "not an SMTP reply: {:?}",
                bad.chars().take(80).collect::<String>()
            ));
        }
        let Some(last) = text.lines().last() else {
            continue;
        };
        // The last line of a reply is "NNN text" (a space, not a dash, after the code).
        if last.len() >= 3 && last.as_bytes().get(3) != Some(&b'-') {
            let code = last[..3].parse::<u16>().map_err(|_| {
                format!(
                    "not an SMTP reply: {:?}",
                    last.chars().take(80).collect::<String>()
                )
            })?;
            return Ok((code, text.trim_end().to_owned()));
        }
    }
}

async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    line: &str,
    expect: u16,
) -> Result<String, String> {
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let (code, text) = read_reply(stream).await?;
    if code != expect {
        return Err(format!(
            "{line}: expected {expect}, got {code} {}",
            first_line(&text)
        ));
    }
    Ok(text)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Banner, EHLO and STARTTLS on a fresh connection, leaving it ready for the handshake.
///
/// # Errors
/// The stage that failed.
pub async fn starttls_preamble<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ehlo_name: &str,
) -> Result<(), String> {
    let (code, text) = read_reply(stream).await?;
    if code != 220 {
        return Err(format!(
            "banner: expected 220, got {code} {}",
            first_line(&text)
        ));
    }
    let ehlo = command(stream, &format!("EHLO {ehlo_name}"), 250).await?;
    if !ehlo.to_ascii_uppercase().contains("STARTTLS") {
        return Err("the server does not offer STARTTLS".into());
    }
    command(stream, "STARTTLS", 220).await?;
    Ok(())
}

/// Runs an SMTP check.
pub async fn probe(check: &SmtpCheck, started: Instant) -> Outcome {
    let Connected {
        mut stream,
        mut timings,
        ..
    } = match connect(&check.host, check.port, IpVersion::Any).await {
        Ok(connected) => connected,
        Err(error) => return Outcome::fail(error, started),
    };
    let mut values = std::collections::BTreeMap::new();
    let ehlo_name = check.ehlo_name.as_deref().unwrap_or("vantage.invalid");
    let stage = Instant::now();
    let banner = match read_reply(&mut stream).await {
        Ok((220, text)) => text,
        Ok((code, text)) => {
            return Outcome::fail(
                format!("banner: expected 220, got {code} {}", first_line(&text)),
                started,
            );
        }
        Err(error) => return Outcome::fail(format!("banner: {error}"), started),
    };
    values.insert("banner_ms".to_owned(), ms(stage.elapsed()));
    let stage = Instant::now();
    let ehlo = match command(&mut stream, &format!("EHLO {ehlo_name}"), 250).await {
        Ok(text) => text,
        Err(error) => return Outcome::fail(error, started),
    };
    values.insert("ehlo_ms".to_owned(), ms(stage.elapsed()));
    let mut reason = format!(
        "220 {}",
        first_line(&banner).trim_start_matches("220").trim()
    );
    if check.starttls {
        if !ehlo.to_ascii_uppercase().contains("STARTTLS") {
            return Outcome::fail("the server does not offer STARTTLS", started);
        }
        let stage = Instant::now();
        if let Err(error) = command(&mut stream, "STARTTLS", 220).await {
            return Outcome::fail(error, started);
        }
        values.insert("starttls_ms".to_owned(), ms(stage.elapsed()));
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
        let mut secure = match handshake {
            Ok(secure) => secure,
            Err(error) => {
                let mut outcome =
                    Outcome::verdict(false, format!("STARTTLS: {error}"), timings, started);
                outcome.values = values;
                return outcome;
            }
        };
        if let Err(error) = command(&mut secure, &format!("EHLO {ehlo_name}"), 250).await {
            return Outcome::fail(format!("after STARTTLS: {error}"), started);
        }
        let _ = secure.write_all(b"QUIT\r\n").await;
        reason.push_str(", STARTTLS ok");
    } else {
        let _ = stream.write_all(b"QUIT\r\n").await;
    }
    let mut outcome = Outcome::verdict(true, reason, timings, started);
    outcome.values = values;
    outcome
}

/// Checks an SMTP check's fields.
///
/// # Errors
/// A message naming the field.
pub fn validate(check: &SmtpCheck) -> Result<(), String> {
    super::validate_endpoint(
        &check.host,
        check.port,
        check.server_name.as_deref(),
        check.ca_pem.as_deref(),
    )?;
    if let Some(name) = &check.ehlo_name
        && (name.is_empty()
            || name.len() > 255
            || name.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err("ehlo_name must be a host name".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::probe::testutil::{leaf, pki};

    /// A real SMTP server: Python's aiosmtpd (installed by scripts/test), with STARTTLS when
    /// given a certificate. Killed on drop.
    struct Aiosmtpd {
        child: Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Drop for Aiosmtpd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn aiosmtpd(tls: Option<(String, String)>) -> Aiosmtpd {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // scripts/test names Debian's Python, which has Debian's python3-aiosmtpd.
        let python = std::env::var("VANTAGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut command = Command::new(python);
        command
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((cert, key)) = tls {
            std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
            std::fs::write(dir.path().join("key.pem"), key).unwrap();
            command
                .arg("--tlscert")
                .arg(dir.path().join("cert.pem"))
                .arg("--tlskey")
                .arg(dir.path().join("key.pem"))
                .arg("--no-requiretls");
        }
        let child = command
            .spawn()
            .expect("python3 with aiosmtpd (scripts/test installs it)");
        let server = Aiosmtpd {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "aiosmtpd did not start: is it installed? (apt-get install python3-aiosmtpd; scripts/test does)"
        );
    }

    fn check(port: u16, starttls: bool, ca_pem: Option<String>) -> SmtpCheck {
        SmtpCheck {
            host: "127.0.0.1".into(),
            port,
            starttls,
            tls_verify: true,
            ca_pem,
            server_name: None,
            ehlo_name: None,
        }
    }

    #[tokio::test]
    async fn banner_ehlo_and_starttls_against_a_real_server() {
        let pki = pki();
        let server = aiosmtpd(Some(leaf(&pki, &["127.0.0.1", "localhost"], -1, 40))).await;
        let outcome = probe(&check(server.port, false, None), Instant::now()).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.reason.starts_with("220 "), "{}", outcome.reason);
        assert!(outcome.values.contains_key("banner_ms") && outcome.values.contains_key("ehlo_ms"));

        let outcome = probe(
            &check(server.port, true, Some(pki.ca_pem.clone())),
            Instant::now(),
        )
        .await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(
            outcome.reason.ends_with(", STARTTLS ok"),
            "{}",
            outcome.reason
        );
        assert!(outcome.timings.tls_ms.is_some());
        assert!(outcome.values["cert_days_left"] >= 39.0);

        // The same server judged with another CA: the STARTTLS certificate check fails.
        let other = crate::probe::testutil::pki();
        let outcome = probe(
            &check(server.port, true, Some(other.ca_pem)),
            Instant::now(),
        )
        .await;
        assert!(!outcome.ok);
        assert!(
            outcome
                .reason
                .starts_with("STARTTLS: certificate issuer not trusted"),
            "{}",
            outcome.reason
        );

        // The tls check type reaches the certificate through SMTP STARTTLS too.
        let tls = vantage_mqtt::TlsCheck {
            host: "127.0.0.1".into(),
            port: server.port,
            starttls: vantage_mqtt::StartTls::Smtp,
            server_name: None,
            ca_pem: Some(pki.ca_pem.clone()),
            min_days_left: 14,
        };
        let outcome = crate::probe::tls::probe(&tls, Instant::now()).await;
        assert!(outcome.ok, "{outcome:?}");
    }

    #[tokio::test]
    async fn a_server_without_starttls_or_smtp_at_all_fails_clearly() {
        let plain = aiosmtpd(None).await;
        let outcome = probe(&check(plain.port, true, None), Instant::now()).await;
        assert_eq!(
            (outcome.ok, outcome.reason.as_str()),
            (false, "the server does not offer STARTTLS")
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(b"SSH-2.0-OpenSSH\r\n").await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let outcome = probe(&check(port, false, None), Instant::now()).await;
        assert!(!outcome.ok);
        assert!(
            outcome.reason.starts_with("banner: not an SMTP reply"),
            "{}",
            outcome.reason
        );
    }
}
