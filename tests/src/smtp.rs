//! A real SMTP server for notification tests: Python's aiosmtpd (installed by scripts/test)
//! with STARTTLS required, a certificate from a throwaway CA the test trusts, and every mail
//! it accepts written to a Maildir the test reads.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A running aiosmtpd; killed on drop.
pub struct MailServer {
    pub port: u16,
    /// The CA that issued the server's certificate (for the channel's `ca_pem`).
    pub ca_pem: String,
    maildir: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for MailServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MailServer {
    /// Starts aiosmtpd on a free loopback port with STARTTLS required.
    ///
    /// # Errors
    /// Certificates cannot be made, or aiosmtpd does not start (not installed?).
    pub async fn start() -> anyhow::Result<MailServer> {
        let dir = tempfile::tempdir()?;
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test mail CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.path().join("cert.pem"), cert.pem())?;
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem())?;
        let port = crate::free_port();
        let maildir = dir.path().join("maildir");
        // scripts/test names Debian's Python, which has Debian's python3-aiosmtpd.
        let python = std::env::var("VANTAGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .arg("--tlscert")
            .arg(dir.path().join("cert.pem"))
            .arg("--tlskey")
            .arg(dir.path().join("key.pem"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("aiosmtpd.log"))?)
            .spawn()
            .context("cannot start aiosmtpd (scripts/test installs python3-aiosmtpd)")?;
        let log = dir.path().join("aiosmtpd.log");
        let mut server = MailServer {
            port,
            ca_pem: ca.pem(),
            maildir,
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!(
                    "aiosmtpd exited ({status}): {} (scripts/test installs python3-aiosmtpd and sets VANTAGE_TEST_PYTHON=/usr/bin/python3)",
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("aiosmtpd is not listening after 20 s")
    }

    /// Every mail accepted so far, as raw text, oldest first.
    pub fn mails(&self) -> Vec<String> {
        let mut files: Vec<(std::time::SystemTime, String)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let modified = entry.metadata().ok()?.modified().ok()?;
                Some((modified, std::fs::read_to_string(entry.path()).ok()?))
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, text)| text).collect()
    }
}
