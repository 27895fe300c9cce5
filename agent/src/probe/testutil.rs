//! Test fixtures shared by the probe tests: an HTTP(S) server with fixed routes (HTTP/1.1
//! and HTTP/2, TLS with certificates the tests issue) and a small CA.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::OffsetDateTime;

pub async fn route(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let response = |status: u16, body: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap_or_default()
    };
    let redirect = |to: String| {
        Response::builder()
            .status(302)
            .header("location", to)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    };
    Ok(match path.as_str() {
        "/ok" => response(200, r#"{"status":"up","version":3}"#),
        "/missing" => response(404, "not here"),
        "/error" => response(500, "boom"),
        "/loop" => redirect("/loop2".into()),
        "/loop2" => redirect("/loop".into()),
        "/big" => response(200, &"x".repeat(2 * 1024 * 1024)),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            response(200, "late")
        }
        p if p.starts_with("/redirect/") => {
            let n: u32 = p.trim_start_matches("/redirect/").parse().unwrap_or(0);
            if n == 0 {
                redirect("/ok".into())
            } else {
                redirect(format!("/redirect/{}", n - 1))
            }
        }
        _ => response(404, ""),
    })
}

/// Serves `route` on 127.0.0.1, over TLS when a certificate is given (h2 and http/1.1).
pub async fn server(tls: Option<(String, String)>) -> u16 {
    server_on("127.0.0.1:0", tls).await
}

/// Like [`server`], on `address` (e.g. `[::1]:0`).
pub async fn server_on(address: &str, tls: Option<(String, String)>) -> u16 {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tls.map(|(cert, key)| {
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let builder = Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service_fn(route))
                                .await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(tcp), service_fn(route))
                            .await;
                    }
                }
            });
        }
    });
    port
}

pub struct Pki {
    pub ca_pem: String,
    pub issuer: Issuer<'static, KeyPair>,
}

pub fn pki() -> Pki {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own, so two test CAs are told apart by name as well as by key.
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("test CA {}", rand::random::<u32>()),
    );
    let cert = params.self_signed(&key).unwrap();
    Pki {
        ca_pem: cert.pem(),
        issuer: Issuer::from_ca_cert_pem(&cert.pem(), key).unwrap(),
    }
}

/// A leaf for `names`, valid from `from_days` to `to_days` relative to now.
pub fn leaf(pki: &Pki, names: &[&str], from_days: i64, to_days: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let now = OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from_days);
    params.not_after = now + time::Duration::days(to_days);
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}
