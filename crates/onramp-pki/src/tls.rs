//! Server-side TLS configuration from Onramp's PEM material, shared by the
//! HTTPS and MQTT listeners.

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Whether a client certificate must be presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Optional, but verified when presented (EST: token enrolment has none).
    Optional,
    /// Required (the MQTT gateway).
    Required,
}

/// A rustls server configuration: `chain_pem` (server certificate, then
/// intermediates), its key, and the anchors client certificates must chain to.
pub fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_roots: &[Vec<u8>],
    client_certs: ClientCerts,
) -> Result<rustls::ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server certificate: {e:?}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("server key: {e:?}"))?;
    let mut roots = RootCertStore::empty();
    for der in client_roots {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("client trust anchor: {e}"))?;
    }
    let builder = WebPkiClientVerifier::builder(Arc::new(roots));
    let builder = match client_certs {
        ClientCerts::Optional => builder.allow_unauthenticated(),
        ClientCerts::Required => builder,
    };
    let verifier = builder
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server TLS: {e}"))
}
