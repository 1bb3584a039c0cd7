//! The HTTPS certificate: one the user configured (`[web] tls_cert`, `tls_key`), or a
//! self-signed one made at the first start and kept in `DIR/web/cert.pem` and `key.pem`
//! (0600). The self-signed certificate names `localhost`, `127.0.0.1`, `::1` and the listen
//! address; a browser warns about it once, as it is not signed by a public CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use cairn_node::WebConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::write_file;
use crate::error::WebError;

/// The server's TLS settings and the PEM of its certificate chain.
pub(crate) struct Tls {
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) cert_pem: String,
}

/// Loads the configured certificate or the self-signed one (made when missing).
pub(crate) fn load(web: &Path, config: &WebConfig, listen: SocketAddr) -> Result<Tls, WebError> {
    let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let (c, k) = (web.join("cert.pem"), web.join("key.pem"));
            if !c.exists() || !k.exists() {
                self_signed(&c, &k, listen)?;
            }
            (c, k)
        }
        _ => {
            return Err(WebError::Config(
                "tls_cert and tls_key go together: set both or neither".into(),
            ));
        }
    };
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| WebError::io(&cert_path, e))?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebError::Tls(format!("{}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(WebError::Tls(format!(
            "{}: no certificate in it",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| WebError::Tls(format!("{}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| WebError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(server),
        cert_pem,
    })
}

/// Makes a self-signed certificate for the loopback names and `listen`.
fn self_signed(cert: &Path, key: &Path, listen: SocketAddr) -> Result<(), WebError> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| WebError::Tls(e.to_string()))?;
    write_file(key, made.signing_key.serialize_pem().as_bytes(), true)?;
    write_file(cert, made.cert.pem().as_bytes(), false)
}
