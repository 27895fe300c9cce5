//! Redaction of the secrets a check specification or a probe's words can carry, for readers
//! who may see a check but not its credentials (viewers, the retained status topics).
//!
//! Every redacted value is replaced by [`MARK`], so the shape stays: a header keeps its name,
//! a URL keeps its scheme, host, port and (for HTTP) path. What is redacted, by check type:
//! - `http`: every header value, the request body, the URL's userinfo, query values and
//!   fragment;
//! - `tcp`: the text of every `send` step (a conversation can log in, e.g. Redis `AUTH`);
//! - `chain`: `url` and `reference_url` keep only scheme, host and port (RPC providers put
//!   the API key in the path or the query);
//! - `dns`, `smtp`, `icmp`, `tls`, `process`: nothing (no field holds a credential).
//!
//! Free text (a result's reason, an event's message) goes through [`scrub_text`]: every URL
//! in it loses its userinfo, query values and fragment.

use std::borrow::Cow;

use crate::check::{CheckKind, TcpStep};

/// What replaces a redacted value.
pub const MARK: &str = "<redacted>";

impl CheckKind {
    /// This check with every field that can hold a secret replaced by [`MARK`].
    pub fn redacted(&self) -> CheckKind {
        let mut kind = self.clone();
        match &mut kind {
            CheckKind::Http(http) => {
                http.url = redact_url(&http.url, false);
                for value in http.headers.values_mut() {
                    *value = MARK.to_owned();
                }
                if let Some(body) = &mut http.body {
                    *body = MARK.to_owned();
                }
            }
            CheckKind::Tcp(tcp) => {
                for step in &mut tcp.steps {
                    if let TcpStep::Send(text) = step {
                        *text = MARK.to_owned();
                    }
                }
            }
            CheckKind::Chain(chain) => {
                chain.url = redact_url(&chain.url, true);
                if let Some(reference) = &mut chain.reference_url {
                    *reference = redact_url(reference, true);
                }
            }
            CheckKind::Dns(_)
            | CheckKind::Smtp(_)
            | CheckKind::Icmp(_)
            | CheckKind::Tls(_)
            | CheckKind::Process(_) => {}
        }
        kind
    }
}

/// `url` without its userinfo, query values and fragment, and without its path too when
/// `path` is set. A text without `scheme://` comes back unchanged.
pub fn redact_url(url: &str, path: bool) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..scheme_end]);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(MARK);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => (&tail[..i], Some(&tail[i + 1..])),
        None => (tail, None),
    };
    let (path_part, query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };
    if path && !path_part.is_empty() && path_part != "/" {
        out.push('/');
        out.push_str(MARK);
    } else {
        out.push_str(path_part);
    }
    if let Some(query) = query {
        out.push('?');
        if path {
            out.push_str(MARK);
        } else {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) => format!("{key}={MARK}"),
                    None if pair.is_empty() => String::new(),
                    None => MARK.to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
    }
    if let Some(fragment) = fragment {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(MARK);
        }
    }
    out
}

/// Where a URL inside free text stops: white space, quotes, angle brackets, backslashes
/// (Debug escapes) and the end of the text.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`')
}

/// `text` with every URL in it redacted as by [`redact_url`] (path kept); borrowed when
/// nothing needed redacting.
pub fn scrub_text(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        // The scheme: letters, digits, `+`, `-`, `.` before `://`, starting with a letter.
        let scheme_start = rest[..sep]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(sep, |(i, _)| i);
        let scheme_start = rest[scheme_start..sep]
            .find(|c: char| c.is_ascii_alphabetic())
            .map_or(sep, |i| scheme_start + i);
        let end = rest[sep + 3..]
            .find(ends_url)
            .map_or(rest.len(), |i| sep + 3 + i);
        out.push_str(&rest[..scheme_start]);
        if scheme_start == sep {
            // No scheme: not a URL, keep the separator as it is.
            out.push_str(&rest[sep..sep + 3]);
            rest = &rest[sep + 3..];
            continue;
        }
        out.push_str(&redact_url(&rest[scheme_start..end], false));
        rest = &rest[end..];
    }
    out.push_str(rest);
    if out == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(out)
    }
}

/// Replaces every string inside `value` (keys excepted) by its [`scrub_text`] form; returns
/// whether anything changed.
pub fn scrub_json(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => match scrub_text(text) {
            Cow::Borrowed(_) => false,
            Cow::Owned(scrubbed) => {
                *text = scrubbed;
                true
            }
        },
        serde_json::Value::Array(items) => items.iter_mut().fold(false, |c, v| scrub_json(v) | c),
        serde_json::Value::Object(map) => map.values_mut().fold(false, |c, v| scrub_json(v) | c),
        _ => false,
    }
}

/// A JSON payload as viewers may read it: every URL in its strings scrubbed. Anything that is
/// not JSON, or holds no URL, comes back unchanged.
pub fn scrub_payload(payload: Vec<u8>) -> Vec<u8> {
    if !payload.windows(3).any(|w| w == b"://") {
        return payload;
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&payload) else {
        return payload;
    };
    if !scrub_json(&mut value) {
        return payload;
    }
    serde_json::to_vec(&value).unwrap_or(payload)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::check::{Chain, ChainCheck, HttpCheck, TcpCheck};

    #[test]
    fn urls_lose_userinfo_query_values_and_fragment_but_keep_their_shape() {
        let cases = [
            ("https://example.com/health", "https://example.com/health"),
            (
                "https://user:pw@example.com:8443/a/b?key=s3cret&x=1#tok",
                "https://<redacted>@example.com:8443/a/b?key=<redacted>&x=<redacted>#<redacted>",
            ),
            ("http://APIKEY@h/", "http://<redacted>@h/"),
            ("http://h/?bare", "http://h/?<redacted>"),
            ("http://h?k=v", "http://h?k=<redacted>"),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url, false), want, "{url}");
        }
        assert_eq!(
            redact_url("https://mainnet.infura.io/v3/abcdef?x=1", true),
            "https://mainnet.infura.io/<redacted>?<redacted>"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8899", true),
            "http://127.0.0.1:8899"
        );
        assert_eq!(redact_url("http://h/", true), "http://h/");
    }

    #[test]
    fn every_secret_field_is_redacted_and_nothing_else() {
        let mut http = HttpCheck::get("https://u:p@example.com/x?token=t1");
        http.headers = BTreeMap::from([("Authorization".into(), "Bearer t2".into())]);
        http.body = Some("{\"password\":\"t3\"}".into());
        let redacted = CheckKind::Http(http.clone()).redacted();
        let text = serde_json::to_string(&redacted).unwrap();
        for secret in ["u:p", "t1", "t2", "t3"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let CheckKind::Http(shown) = redacted else {
            panic!("not http")
        };
        assert_eq!(shown.headers["Authorization"], MARK);
        assert_eq!(
            shown.url,
            "https://<redacted>@example.com/x?token=<redacted>"
        );
        assert_eq!(shown.method, http.method);

        let mut tcp = TcpCheck::connect("redis", 6379);
        tcp.steps = vec![
            TcpStep::Send("AUTH hunter2\r\n".into()),
            TcpStep::Expect("^\\+OK".into()),
        ];
        let CheckKind::Tcp(shown) = CheckKind::Tcp(tcp).redacted() else {
            panic!("not tcp")
        };
        assert_eq!(
            shown.steps,
            vec![TcpStep::Send(MARK.into()), TcpStep::Expect("^\\+OK".into())]
        );

        let chain = CheckKind::Chain(ChainCheck {
            chain: Chain::Evm,
            url: "https://eth.example/v2/KEY1".into(),
            reference_url: Some("https://ref.example/?apikey=KEY2".into()),
            max_lag: Some(3),
        });
        let text = serde_json::to_string(&chain.redacted()).unwrap();
        assert!(!text.contains("KEY1") && !text.contains("KEY2"), "{text}");

        let plain: CheckKind =
            serde_json::from_str(r#"{"type":"dns","name":"example.com","record_type":"A"}"#)
                .unwrap();
        assert_eq!(plain.redacted(), plain);
    }

    #[test]
    fn urls_inside_free_text_are_scrubbed() {
        assert!(matches!(
            scrub_text("status 200 (HTTP/1.1)"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            scrub_text("http://example.com/ok is up"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            scrub_text("redirect loop at http://admin:hunter2@127.0.0.1:80/loop?k=v"),
            "redirect loop at http://<redacted>@127.0.0.1:80/loop?k=<redacted>"
        );
        assert_eq!(
            scrub_text("url \"https://u:p@h/\" and ftp://x@y then ://z"),
            "url \"https://<redacted>@h/\" and ftp://<redacted>@y then ://z"
        );
        // Idempotent: a scrubbed text scrubs to itself.
        let once = scrub_text("see https://a:b@h/?q=1").into_owned();
        assert_eq!(scrub_text(&once), once);
    }

    #[test]
    fn payloads_are_scrubbed_only_when_they_hold_a_url() {
        let plain = br#"{"reason":"ok"}"#.to_vec();
        assert_eq!(scrub_payload(plain.clone()), plain);
        let secret = br#"{"reason":"redirect loop at http://u:pw@h/x","ok":false}"#.to_vec();
        let scrubbed: serde_json::Value = serde_json::from_slice(&scrub_payload(secret)).unwrap();
        assert_eq!(scrubbed["reason"], "redirect loop at http://<redacted>@h/x");
        assert_eq!(scrubbed["ok"], false);
        assert_eq!(scrub_payload(b"not json ://".to_vec()), b"not json ://");
    }
}
