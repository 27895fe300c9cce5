//! `vantage cloud-init` and the dashboard's enrollment page: `#cloud-config` user-data (or
//! the same as a script for a root shell) that installs and enrolls an agent on a new
//! node — the CA and the release key pinned, a fresh limited enrollment token, and a runcmd
//! that verifies the signed artifacts before anything runs.
//!
//! The node fetches `SHA256SUMS` and `SHA256SUMS.sig` from the control plane's `/dist` (over
//! HTTPS pinned to our CA), checks the ed25519 signature with the pinned release key, checks
//! `install.sh` against the signed sums, and only then runs it; install.sh verifies the
//! agent tarball the same way. The token lives in a 0600 file that is deleted afterwards.

/// What goes into the user-data.
pub struct UserData<'a> {
    /// The control plane's HTTPS API, e.g. `https://cp.example.net:8443`.
    pub server_url: &'a str,
    /// Where the artifacts are, e.g. `https://cp.example.net:8443/dist`.
    pub artifacts_url: &'a str,
    pub ca_pem: &'a str,
    pub release_pub_pem: &'a str,
    pub token: &'a str,
    /// A comment line: token id, region, uses and expiry (no secret).
    pub comment: &'a str,
}

/// Checks that `url` is an https URL with nothing a shell or YAML would reinterpret.
///
/// # Errors
/// A message naming the flag.
pub fn check_url(flag: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{flag} must start with https://"))?;
    if rest.is_empty()
        || !rest.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/' | '[' | ']')
        })
    {
        return Err(format!(
            "{flag} may hold only a host, a port and a path (letters, digits, . - _ : / [ ])"
        ));
    }
    Ok(())
}

fn indented(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.trim_end()
        .lines()
        .map(|line| format!("{pad}{line}\n"))
        .collect()
}

/// The script that fetches, verifies and runs `install.sh`, once the CA, the release key and
/// the token file are in `/etc/vantage`.
fn install_script(data: &UserData<'_>) -> String {
    format!(
        r#"set -eu
d=$(mktemp -d)
# The token goes whatever happens: a failed first boot must not leave it on disk.
trap 'rm -rf "$d" /etc/vantage/enrollment-token' EXIT
get() {{ curl -fsS --retry 10 --retry-delay 3 --retry-all-errors --proto =https --cacert /etc/vantage/ca.pem -o "$d/$1" "{artifacts}/$1"; }}
get SHA256SUMS
get SHA256SUMS.sig
openssl pkeyutl -verify -pubin -inkey /etc/vantage/release.pub -rawin -in "$d/SHA256SUMS" -sigfile "$d/SHA256SUMS.sig"
get install.sh
[ "$(awk '$2 == "install.sh" {{ print $1 }}' "$d/SHA256SUMS")" = "$(sha256sum "$d/install.sh" | awk '{{ print $1 }}')" ] || {{ echo "install.sh does not match the signed SHA256SUMS" >&2; exit 1; }}
sh "$d/install.sh" --artifacts "{artifacts}" --server-url "{server}" --ca-file /etc/vantage/ca.pem --pubkey /etc/vantage/release.pub --token-file /etc/vantage/enrollment-token
"#,
        artifacts = data.artifacts_url,
        server = data.server_url,
    )
}

/// The same installation as a script to paste into a root shell on a node: it writes the
/// CA, the release key and the token (mode 0600, deleted afterwards) and runs what the
/// user-data runs. URLs must have passed [`check_url`]; the token and PEMs need no quoting.
pub fn shell(data: &UserData<'_>) -> String {
    format!(
        "# {comment}\n(\nset -eu\nmkdir -p /etc/vantage\numask 022\n\
         cat > /etc/vantage/ca.pem <<'VANTAGE_PEM'\n{ca}\nVANTAGE_PEM\n\
         cat > /etc/vantage/release.pub <<'VANTAGE_PEM'\n{key}\nVANTAGE_PEM\n\
         (umask 077; echo 'VANTAGE_ENROLLMENT_TOKEN={token}' > /etc/vantage/enrollment-token)\n\
         {script})\n",
        comment = data.comment,
        ca = data.ca_pem.trim_end(),
        key = data.release_pub_pem.trim_end(),
        token = data.token,
        script = install_script(data),
    )
}

/// Renders the user-data. URLs must have passed [`check_url`]; the token and PEMs are
/// base64/PEM text and need no quoting.
pub fn render(data: &UserData<'_>) -> String {
    let script = install_script(data);
    let mut out = String::from("#cloud-config\n");
    out.push_str(&format!("# {}\n", data.comment));
    out.push_str("packages:\n  - ca-certificates\n  - curl\n  - openssl\n");
    out.push_str("write_files:\n");
    for (path, permissions, content) in [
        ("/etc/vantage/ca.pem", "0644", data.ca_pem.to_owned()),
        (
            "/etc/vantage/release.pub",
            "0644",
            data.release_pub_pem.to_owned(),
        ),
        (
            "/etc/vantage/enrollment-token",
            "0600",
            format!("VANTAGE_ENROLLMENT_TOKEN={}", data.token),
        ),
    ] {
        out.push_str(&format!(
            "  - path: {path}\n    owner: root:root\n    permissions: '{permissions}'\n    content: |\n"
        ));
        out.push_str(&indented(&content, 6));
    }
    out.push_str("runcmd:\n  - - sh\n    - -c\n    - |\n");
    out.push_str(&indented(&script, 6));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_and_plain() {
        assert!(check_url("--server-url", "https://cp.example.net:8443").is_ok());
        assert!(check_url("--server-url", "https://[::1]:8443/x").is_ok());
        assert!(check_url("--server-url", "http://cp").is_err());
        assert!(check_url("--server-url", "https://cp\"; rm -rf /").is_err());
        assert!(check_url("--server-url", "https://").is_err());
    }

    #[test]
    fn user_data_pins_ca_key_and_token_file() {
        let text = render(&UserData {
            server_url: "https://cp:8443",
            artifacts_url: "https://cp:8443/dist",
            ca_pem: "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",
            release_pub_pem: "-----BEGIN PUBLIC KEY-----\nBBB\n-----END PUBLIC KEY-----\n",
            token: "vet_secret",
            comment: "token t1",
        });
        assert!(text.starts_with("#cloud-config\n"));
        assert!(text.contains("      -----BEGIN CERTIFICATE-----\n      AAA\n"));
        assert!(text.contains("      VANTAGE_ENROLLMENT_TOKEN=vet_secret\n"));
        assert!(text.contains("permissions: '0600'"));
        // The token is never on a command line.
        let runcmd = &text[text.find("runcmd:").unwrap()..];
        assert!(!runcmd.contains("vet_secret"));
        assert!(runcmd.contains("--token-file /etc/vantage/enrollment-token"));
    }

    #[test]
    fn the_shell_snippet_writes_the_same_files_and_parses() {
        let data = UserData {
            server_url: "https://cp.example.net:8443",
            artifacts_url: "https://cp.example.net:8443/dist",
            ca_pem: "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n",
            release_pub_pem: "-----BEGIN PUBLIC KEY-----\nREVG\n-----END PUBLIC KEY-----\n",
            token: "vet_secret",
            comment: "token et-1",
        };
        let text = shell(&data);
        for part in [
            "cat > /etc/vantage/ca.pem <<'VANTAGE_PEM'\n-----BEGIN CERTIFICATE-----",
            "cat > /etc/vantage/release.pub <<'VANTAGE_PEM'\n-----BEGIN PUBLIC KEY-----",
            "(umask 077; echo 'VANTAGE_ENROLLMENT_TOKEN=vet_secret' > /etc/vantage/enrollment-token)",
            "openssl pkeyutl -verify",
            "--server-url \"https://cp.example.net:8443\"",
        ] {
            assert!(text.contains(part), "no {part:?} in\n{text}");
        }
        let checked = std::process::Command::new("sh")
            .args(["-n", "-c", &text])
            .output()
            .expect("sh runs");
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}
