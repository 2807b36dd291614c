//! Mutual TLS between members: a server that demands a client certificate
//! signed by the cluster CA, a client that trusts only that CA, and the
//! check that the certificate names the member the peer claims to be.
//!
//! Membership is not identity: any member's certificate is signed by the
//! CA, so the CA check alone would let node `c` pose as `b`. The dialler
//! asks rustls to verify the server for the member name it dials (a
//! subjectAltName DNS entry); the acceptor, which learns the claimed name
//! from the peer's first frame, verifies the client certificate for that
//! name with [`LinkTls::certifies`]. A node certificate therefore carries
//! its member name as a DNS subjectAltName, and is valid for both server
//! and client authentication (no extendedKeyUsage, or both).

use std::{path::Path, sync::Arc};

use rustls::{
    client::{danger::ServerCertVerifier, WebPkiServerVerifier},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig,
};

use crate::config::ClusterConfig;

/// ALPN of links, so a link never speaks to an HTTPS listener by mistake:
/// frame version 1's name (the first release offered only this one).
pub const LINK_ALPN: &[u8] = b"aquatic-link";
/// ALPN of a link speaking frame version 2.
pub const LINK_ALPN_V2: &[u8] = b"aquatic-link/2";

/// What both sides offer, newest first: the acceptor picks the first of
/// its own list that the dialler offers (rustls), so two current nodes
/// agree on version 2 and a current node and a previous one on version 1.
fn link_alpn() -> Vec<Vec<u8>> {
    vec![LINK_ALPN_V2.to_vec(), LINK_ALPN.to_vec()]
}

/// The frame version a link agreed on in its handshake. No ALPN at all is
/// a peer that predates the choice: the oldest version.
pub fn agreed_version(alpn: Option<&[u8]>) -> u16 {
    match alpn {
        Some(LINK_ALPN_V2) => 2,
        _ => crate::cluster::frame::OLDEST_FRAME_VERSION,
    }
}

/// Why the cluster's TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkTlsError {
    /// A file is missing, unreadable or holds nothing usable.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// Which file: CA, certificate or key.
        what: &'static str,
        /// The path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the material (a key that does not match, a bad CA).
    #[error("invalid cluster TLS material: {0}")]
    Rejected(String),
}

/// The TLS side of every link of this node.
#[derive(Clone)]
pub struct LinkTls {
    /// For links other members dial.
    pub server: Arc<ServerConfig>,
    /// For links this node dials.
    pub client: Arc<ClientConfig>,
    /// Checks a peer's certificate against the CA and a member name.
    names: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls")
    }
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, LinkTlsError> {
    let error = |reason: String| LinkTlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no certificate in the file".into()));
    }
    Ok(certificates)
}

impl LinkTls {
    /// From the files `[cluster]` names.
    pub fn load(config: &ClusterConfig) -> Result<Self, LinkTlsError> {
        let ca = read_certificates("the cluster CA", &config.ca_certificate_path)?;
        let chain = read_certificates("the node certificate", &config.certificate_path)?;
        let key = PrivateKeyDer::from_pem_file(&config.private_key_path).map_err(|e| {
            LinkTlsError::File {
                what: "the node private key",
                path: config.private_key_path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        Self::new(ca, chain, key)
    }

    /// From the CA's certificates and this node's chain and key.
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, LinkTlsError> {
        let rejected = |e: &dyn std::fmt::Display| LinkTlsError::Rejected(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for certificate in ca {
            roots.add(certificate).map_err(|e| rejected(&e))?;
        }
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| rejected(&e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| rejected(&e))?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| rejected(&e))?;
        server.alpn_protocols = link_alpn();
        let names = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| rejected(&e))?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| rejected(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| rejected(&e))?;
        client.alpn_protocols = link_alpn();
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            names,
        })
    }

    /// Whether `certificates` (a peer's chain, end entity first) are signed
    /// by the cluster CA and name `member`.
    pub fn certifies(&self, certificates: &[CertificateDer<'_>], member: &str) -> bool {
        let Some((end_entity, intermediates)) = certificates.split_first() else {
            return false;
        };
        let Ok(name) = ServerName::try_from(member) else {
            return false;
        };
        self.names
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .is_ok()
    }
}

/// The name the dialler verifies the server for.
pub fn server_name(member: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(member.to_owned()).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    /// A CA and certificates it signs, made in memory.
    pub(crate) struct TestCa {
        ca: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> Self {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let ca = params.self_signed(&key).expect("self-signed");
            Self { ca, key }
        }

        pub(crate) fn der(&self) -> CertificateDer<'static> {
            self.ca.der().clone()
        }

        /// A node certificate with `name` as its DNS subjectAltName.
        pub(crate) fn node(
            &self,
            name: &str,
        ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
            let cert = params.signed_by(&key, &self.ca, &self.key).expect("signed");
            let key = PrivateKeyDer::try_from(key.serialize_der()).expect("der key");
            (vec![cert.der().clone()], key)
        }

        pub(crate) fn tls(&self, name: &str) -> LinkTls {
            let (chain, key) = self.node(name);
            LinkTls::new(vec![self.der()], chain, key).expect("valid")
        }
    }

    /// Runs a handshake in memory: `dialler` dials the member `expecting`;
    /// Ok with the certificates the acceptor saw.
    fn handshake(
        dialler: &LinkTls,
        acceptor: &LinkTls,
        expecting: &str,
    ) -> Result<Vec<CertificateDer<'static>>, rustls::Error> {
        let name = server_name(expecting).expect("name");
        let mut client = ClientConnection::new(dialler.client.clone(), name)?;
        let mut server = ServerConnection::new(acceptor.server.clone())?;
        for _ in 0..20 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).expect("write");
            server.read_tls(&mut bytes.as_slice()).expect("read");
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).expect("write");
            client.read_tls(&mut bytes.as_slice()).expect("read");
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                let mut bytes = Vec::new();
                client.write_tls(&mut bytes).expect("write");
                server.read_tls(&mut bytes.as_slice()).expect("read");
                server.process_new_packets()?;
                return Ok(server
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn members_of_one_ca_link_and_are_named() {
        let ca = TestCa::new("cluster");
        let (a, b) = (ca.tls("a"), ca.tls("b"));
        let seen = handshake(&a, &b, "b").expect("links");
        assert!(b.certifies(&seen, "a"), "a's certificate names a");
        assert!(!b.certifies(&seen, "c"), "and not c");
    }

    #[test]
    fn a_node_cannot_pose_as_another() {
        let ca = TestCa::new("cluster");
        let (a, b, c) = (ca.tls("a"), ca.tls("b"), ca.tls("c"));
        // a dials "b" but reaches c: c's certificate does not name b.
        assert!(handshake(&a, &c, "b").is_err(), "refused on dial");
        // c dials b and says it is a: the handshake passes (c is a
        // member), the name check does not.
        let seen = handshake(&c, &b, "b").expect("c is a member");
        assert!(!b.certifies(&seen, "a"), "refused on accept");
        assert!(b.certifies(&seen, "c"));
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused_both_ways() {
        let (ca, rogue) = (TestCa::new("cluster"), TestCa::new("rogue"));
        let (a, b) = (ca.tls("a"), ca.tls("b"));
        let (chain, key) = rogue.node("a");
        // Trusts the cluster CA but presents a rogue certificate.
        let impostor = LinkTls::new(vec![ca.der()], chain, key).expect("valid material");
        assert!(
            handshake(&impostor, &b, "b").is_err(),
            "acceptor refuses it"
        );
        assert!(handshake(&b, &impostor, "a").is_err(), "dialler refuses it");
        assert!(handshake(&a, &b, "b").is_ok());
    }

    /// The ALPN a dialler with `client` protocols and an acceptor with
    /// `server` ones agree on (in memory), as both sides read it.
    fn agreed(client: Vec<Vec<u8>>, server: Vec<Vec<u8>>) -> (u16, u16) {
        let ca = TestCa::new("cluster");
        let (a, b) = (ca.tls("a"), ca.tls("b"));
        let mut client_config = (*a.client).clone();
        client_config.alpn_protocols = client;
        let mut server_config = (*b.server).clone();
        server_config.alpn_protocols = server;
        let name = server_name("b").expect("name");
        let mut client = ClientConnection::new(Arc::new(client_config), name).expect("client");
        let mut server = ServerConnection::new(Arc::new(server_config)).expect("server");
        for _ in 0..20 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).expect("write");
            server.read_tls(&mut bytes.as_slice()).expect("read");
            server.process_new_packets().expect("server");
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).expect("write");
            client.read_tls(&mut bytes.as_slice()).expect("read");
            client.process_new_packets().expect("client");
            if !client.is_handshaking() && !server.is_handshaking() {
                return (
                    agreed_version(client.alpn_protocol()),
                    agreed_version(server.alpn_protocol()),
                );
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn two_current_nodes_agree_on_version_2_and_a_previous_one_on_1() {
        assert_eq!(agreed(link_alpn(), link_alpn()), (2, 2));
        let previous = vec![LINK_ALPN.to_vec()];
        assert_eq!(
            agreed(link_alpn(), previous.clone()),
            (1, 1),
            "old acceptor"
        );
        assert_eq!(agreed(previous, link_alpn()), (1, 1), "old dialler");
        assert_eq!(agreed(link_alpn(), Vec::new()), (1, 1), "no ALPN at all");
    }

    #[test]
    fn missing_files_are_named() {
        let config = ClusterConfig {
            ca_certificate_path: "/nonexistent/ca.pem".into(),
            ..ClusterConfig::default()
        };
        let err = LinkTls::load(&config).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
