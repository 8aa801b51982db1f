//! Server-side TLS configuration from Onramp's PEM material, shared by the
//! HTTPS and MQTT listeners.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::sync::{Arc, PoisonError, RwLock};

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
/// The anchors are fixed for the life of the configuration.
pub fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_roots: &[Vec<u8>],
    client_certs: ClientCerts,
) -> Result<rustls::ServerConfig, String> {
    let verifier = webpki_verifier(client_roots.iter(), client_certs)?;
    build_server_config(chain_pem, key_pem, verifier)
}

/// Like [`server_config`], but client certificates are checked against the
/// anchors `roots` holds at the time of each handshake, so CAs registered
/// while the server runs take effect without rebuilding the listener.
pub fn server_config_with_roots(
    chain_pem: &[u8],
    key_pem: &[u8],
    roots: ClientRoots,
    client_certs: ClientCerts,
) -> Result<rustls::ServerConfig, String> {
    let verifier = Arc::new(DynamicClientVerifier {
        roots,
        client_certs,
    });
    build_server_config(chain_pem, key_pem, verifier)
}

/// Lets a client certificate that expired recently through the TLS
/// handshake, so the device can renew it (EST `simplereenroll`, MQTT
/// rotation). Only certificates issued directly by `issuer_der` (Onramp's
/// own issuing CA) qualify, only within `window_secs` after their notAfter,
/// and the chain must have been valid at that notAfter. Whatever the
/// handshake lets through, the service still decides: every path but the two
/// renewals refuses an expired certificate.
#[derive(Debug, Clone)]
pub struct ExpiredRenewal {
    pub issuer_der: Vec<u8>,
    pub window_secs: i64,
}

/// Like [`server_config`], with recently expired certificates of Onramp's
/// own CA let through for renewal when `renewal` is set.
pub fn server_config_renewing(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_roots: &[Vec<u8>],
    client_certs: ClientCerts,
    renewal: Option<ExpiredRenewal>,
) -> Result<rustls::ServerConfig, String> {
    let inner = webpki_verifier(client_roots.iter(), client_certs)?;
    let verifier: Arc<dyn ClientCertVerifier> = match renewal {
        Some(r) if r.window_secs > 0 => Arc::new(RenewingVerifier { inner, renewal: r }),
        _ => inner,
    };
    build_server_config(chain_pem, key_pem, verifier)
}

/// The verification of one client certificate, letting a recently expired
/// one through per `renewal`.
fn verify_with_renewal(
    inner: &dyn ClientCertVerifier,
    renewal: Option<&ExpiredRenewal>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<ClientCertVerified, rustls::Error> {
    let first = inner.verify_client_cert(end_entity, intermediates, now);
    let Some(r) = renewal else {
        return first;
    };
    if !matches!(
        &first,
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
        ))
    ) || r.window_secs <= 0
        || !crate::signed_by(end_entity.as_ref(), &r.issuer_der)
    {
        return first;
    }
    let Ok(info) = crate::parse_cert(end_entity.as_ref()) else {
        return first;
    };
    let Ok(not_after) = u64::try_from(info.not_after) else {
        return first;
    };
    let now_secs = now.as_secs();
    if now_secs.saturating_sub(not_after) > r.window_secs.unsigned_abs() {
        return first;
    }
    inner.verify_client_cert(
        end_entity,
        intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(not_after)),
    )
}

/// A fixed verifier with [`ExpiredRenewal`].
#[derive(Debug)]
struct RenewingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    renewal: ExpiredRenewal,
}

impl ClientCertVerifier for RenewingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_with_renewal(
            self.inner.as_ref(),
            Some(&self.renewal),
            end_entity,
            intermediates,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn build_server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server certificate: {e:?}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("server key: {e:?}"))?;
    rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server TLS: {e}"))
}

fn webpki_verifier<'a>(
    anchors: impl Iterator<Item = &'a Vec<u8>>,
    client_certs: ClientCerts,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for der in anchors {
        roots
            .add(CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("client trust anchor: {e}"))?;
    }
    let builder = WebPkiClientVerifier::builder(Arc::new(roots));
    let builder = match client_certs {
        ClientCerts::Optional => builder.allow_unauthenticated(),
        ClientCerts::Required => builder,
    };
    builder.build().map_err(|e| format!("client verifier: {e}"))
}

/// The anchors client certificates may chain to: Onramp's own CA, fixed at
/// start, plus the manufacturer CAs registered while the server runs.
/// Clones share the same anchors.
#[derive(Clone)]
pub struct ClientRoots {
    shared: Arc<RootsShared>,
}

struct RootsShared {
    base: RwLock<Vec<Vec<u8>>>,
    registered: RwLock<Vec<Vec<u8>>>,
    renewal: Option<ExpiredRenewal>,
    current: RwLock<Arc<Verifiers>>,
}

/// Verifiers for the current anchors, one per [`ClientCerts`] mode, built
/// together so a handshake never pays for building one.
struct Verifiers {
    registered: usize,
    optional: Arc<dyn ClientCertVerifier>,
    required: Arc<dyn ClientCertVerifier>,
}

impl Verifiers {
    fn build(base: &[Vec<u8>], registered: &[Vec<u8>]) -> Result<Verifiers, String> {
        let all = || base.iter().chain(registered);
        Ok(Verifiers {
            registered: registered.len(),
            optional: webpki_verifier(all(), ClientCerts::Optional)?,
            required: webpki_verifier(all(), ClientCerts::Required)?,
        })
    }

    fn get(&self, client_certs: ClientCerts) -> &Arc<dyn ClientCertVerifier> {
        match client_certs {
            ClientCerts::Optional => &self.optional,
            ClientCerts::Required => &self.required,
        }
    }
}

impl ClientRoots {
    /// Starts with `base` (DER) as the only anchors. `base` must not be empty.
    pub fn new(base: Vec<Vec<u8>>) -> Result<ClientRoots, String> {
        Self::new_renewing(base, None)
    }

    /// Like [`ClientRoots::new`], letting recently expired certificates of
    /// Onramp's own CA through for renewal when `renewal` is set.
    pub fn new_renewing(
        base: Vec<Vec<u8>>,
        renewal: Option<ExpiredRenewal>,
    ) -> Result<ClientRoots, String> {
        let renewal = renewal.filter(|r| r.window_secs > 0);
        let verifiers = Verifiers::build(&base, &[])?;
        Ok(ClientRoots {
            shared: Arc::new(RootsShared {
                base: RwLock::new(base),
                registered: RwLock::new(Vec::new()),
                renewal,
                current: RwLock::new(Arc::new(verifiers)),
            }),
        })
    }

    /// Replaces the registered anchors (DER) with `cas`; the base anchors stay.
    /// On error (an unparsable certificate) the previous anchors stay in force.
    pub fn set_registered(&self, cas: Vec<Vec<u8>>) -> Result<(), String> {
        let base = self.base();
        let verifiers = Arc::new(Verifiers::build(&base, &cas)?);
        *self
            .shared
            .registered
            .write()
            .unwrap_or_else(PoisonError::into_inner) = cas;
        // The lock only guards an Arc swap, which cannot panic half-way, so a
        // poisoned lock still holds a consistent value.
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = verifiers;
        Ok(())
    }

    /// Replaces the base anchors (Onramp's own issuing CAs, after a CA
    /// rollover or retirement); the registered anchors stay. On error the
    /// previous anchors stay in force. `base` must not be empty.
    pub fn set_base(&self, base: Vec<Vec<u8>>) -> Result<(), String> {
        if base.is_empty() {
            return Err("no client trust anchor".into());
        }
        let registered = self
            .shared
            .registered
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let verifiers = Arc::new(Verifiers::build(&base, &registered)?);
        *self
            .shared
            .base
            .write()
            .unwrap_or_else(PoisonError::into_inner) = base;
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = verifiers;
        Ok(())
    }

    fn base(&self) -> Vec<Vec<u8>> {
        self.shared
            .base
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn current(&self) -> Arc<Verifiers> {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for ClientRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRoots")
            .field("base", &self.base().len())
            .field("registered", &self.current().registered)
            .finish()
    }
}

/// A client certificate verifier that looks up the current anchors of a
/// [`ClientRoots`] on every handshake.
#[derive(Debug)]
struct DynamicClientVerifier {
    roots: ClientRoots,
    client_certs: ClientCerts,
}

impl DynamicClientVerifier {
    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        self.roots.current().get(self.client_certs).clone()
    }
}

impl ClientCertVerifier for DynamicClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.client_certs == ClientCerts::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints live behind the lock and cannot be borrowed past it. An
        // empty list means "any CA" (RFC 8446 §4.2.4), so clients still send
        // their certificate; a partial list (only the base CA) would be worse,
        // as clients that pick a certificate by hint would withhold one
        // issued by a registered manufacturer CA.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_with_renewal(
            self.inner().as_ref(),
            self.roots.shared.renewal.as_ref(),
            end_entity,
            intermediates,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::{ClientConnection, ServerConnection};
    use rustls_pki_types::{PrivatePkcs8KeyDer, ServerName};

    struct TestCa {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn test_ca(name: &str) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf signed by `ca`: (certificate PEM, key).
    fn leaf(ca: &TestCa, name: &str, server: bool) -> (String, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key)
    }

    struct Setup {
        ours: TestCa,
        server: Arc<rustls::ServerConfig>,
    }

    fn setup(roots: &ClientRoots, ours: TestCa) -> Setup {
        let (chain, key) = leaf(&ours, "localhost", true);
        let config = server_config_with_roots(
            chain.as_bytes(),
            key.serialize_pem().as_bytes(),
            roots.clone(),
            ClientCerts::Required,
        )
        .unwrap();
        Setup {
            ours,
            server: Arc::new(config),
        }
    }

    /// Runs a handshake in memory with a client presenting a certificate from
    /// `client_ca`; the server's verdict.
    fn connect(setup: &Setup, client_ca: &TestCa) -> Result<(), rustls::Error> {
        let (cert_pem, key) = leaf(client_ca, "device-1", false);
        let mut trust = RootCertStore::empty();
        trust
            .add(CertificateDer::from(setup.ours.der.clone()))
            .unwrap();
        let client_config = rustls::ClientConfig::builder()
            .with_root_certificates(trust)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let mut client = ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut server = ServerConnection::new(setup.server.clone()).unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).unwrap();
            }
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                server.read_tls(&mut rest).unwrap();
                server.process_new_packets()?;
            }
            let mut bytes = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut bytes).unwrap();
            }
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                client.read_tls(&mut rest).unwrap();
                client
                    .process_new_packets()
                    .expect("the client accepts the server");
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    fn refused(result: Result<(), rustls::Error>) -> bool {
        matches!(result, Err(rustls::Error::InvalidCertificate(_)))
    }

    /// A client leaf of `ca` valid from two days before `not_after`.
    fn leaf_until(ca: &TestCa, not_after: i64) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["device-1".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before =
            ::time::OffsetDateTime::from_unix_timestamp(not_after - 2 * 86_400).unwrap();
        params.not_after = ::time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        CertificateDer::from(cert.der().to_vec())
    }

    #[test]
    fn a_recently_expired_certificate_of_our_ca_passes_only_within_the_window() {
        let ours = test_ca("Onramp Test CA");
        let maker = test_ca("Maker CA");
        let inner = webpki_verifier(
            [ours.der.clone(), maker.der.clone()].iter(),
            ClientCerts::Required,
        )
        .unwrap();
        let now_secs = 1_900_000_000_u64;
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_secs));
        let now_i = now_secs as i64;
        let renewal = ExpiredRenewal {
            issuer_der: ours.der.clone(),
            window_secs: 3600,
        };
        let check = |leaf: &CertificateDer<'_>, r: Option<&ExpiredRenewal>| {
            verify_with_renewal(inner.as_ref(), r, leaf, &[], now).is_ok()
        };
        let valid = leaf_until(&ours, now_i + 3600);
        let recent = leaf_until(&ours, now_i - 600);
        let old = leaf_until(&ours, now_i - 7200);
        let makers = leaf_until(&maker, now_i - 600);
        assert!(check(&valid, None));
        // Off: an expired certificate is refused.
        assert!(!check(&recent, None));
        assert!(!check(
            &recent,
            Some(&ExpiredRenewal {
                window_secs: 0,
                ..renewal.clone()
            })
        ));
        // On: within the window, issued by our CA only.
        assert!(check(&recent, Some(&renewal)));
        assert!(!check(&old, Some(&renewal)));
        assert!(!check(&makers, Some(&renewal)));
        assert!(check(&valid, Some(&renewal)));
    }

    #[test]
    fn registered_client_cas_take_effect_on_the_next_handshake() {
        let ours = test_ca("Onramp Test CA");
        let roots = ClientRoots::new(vec![ours.der.clone()]).unwrap();
        let setup = setup(&roots, ours);
        let maker = test_ca("Maker CA");

        assert!(connect(&setup, &setup.ours).is_ok());
        assert!(refused(connect(&setup, &maker)));

        // A clone shares the anchors, as the registry's handle would.
        roots
            .clone()
            .set_registered(vec![maker.der.clone()])
            .unwrap();
        assert!(connect(&setup, &maker).is_ok());
        assert!(connect(&setup, &setup.ours).is_ok());

        roots.set_registered(vec![]).unwrap();
        assert!(refused(connect(&setup, &maker)));
        assert!(connect(&setup, &setup.ours).is_ok());
    }

    #[test]
    fn a_bad_registered_ca_keeps_the_previous_anchors() {
        let ours = test_ca("Onramp Test CA");
        let roots = ClientRoots::new(vec![ours.der.clone()]).unwrap();
        let setup = setup(&roots, ours);
        let maker = test_ca("Maker CA");
        roots.set_registered(vec![maker.der.clone()]).unwrap();
        assert!(
            roots
                .set_registered(vec![maker.der.clone(), b"not a certificate".to_vec()])
                .is_err()
        );
        assert!(connect(&setup, &maker).is_ok());
    }

    #[test]
    fn no_base_anchor_is_an_error() {
        assert!(ClientRoots::new(vec![]).is_err());
    }

    #[test]
    fn the_static_config_still_verifies_clients() {
        let ours = test_ca("Onramp Test CA");
        let (chain, key) = leaf(&ours, "localhost", true);
        let config = server_config(
            chain.as_bytes(),
            key.serialize_pem().as_bytes(),
            std::slice::from_ref(&ours.der),
            ClientCerts::Required,
        )
        .unwrap();
        let setup = Setup {
            ours,
            server: Arc::new(config),
        };
        let maker = test_ca("Maker CA");
        assert!(connect(&setup, &setup.ours).is_ok());
        assert!(refused(connect(&setup, &maker)));
    }
}
