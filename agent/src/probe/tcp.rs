//! TCP probe: connect time to host:port.

use std::time::Instant;

use vantage_mqtt::Timings;

use super::{Outcome, ms};

/// Connects to `host:port` (every resolved address in turn).
pub async fn probe(host: &str, port: u16, started: Instant) -> Outcome {
    let addresses = match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => addresses.collect::<Vec<_>>(),
        Err(error) => return Outcome::fail(format!("cannot resolve {host}: {error}"), started),
    };
    let dns_ms = ms(started.elapsed());
    let mut last_error = format!("{host} resolved to no address");
    for address in addresses {
        let connect_started = Instant::now();
        match tokio::net::TcpStream::connect(address).await {
            Ok(_) => {
                let connect_ms = ms(connect_started.elapsed());
                return Outcome {
                    ok: true,
                    reason: format!("connected to {address}"),
                    timings: Timings {
                        dns_ms: Some(dns_ms),
                        connect_ms: Some(connect_ms),
                        total_ms: ms(started.elapsed()),
                        ..Timings::default()
                    },
                    status_code: None,
                };
            }
            Err(error) => last_error = format!("connect to {address} failed: {error}"),
        }
    }
    Outcome::fail(last_error, started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_port_passes_and_closed_port_fails_with_the_reason() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ok = probe("127.0.0.1", port, Instant::now()).await;
        assert!(ok.ok, "{ok:?}");
        assert!(ok.timings.connect_ms.is_some());
        drop(listener);
        let refused = probe("127.0.0.1", port, Instant::now()).await;
        assert!(!refused.ok);
        assert!(refused.reason.contains("refused"), "{}", refused.reason);
    }
}
