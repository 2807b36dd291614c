//! TLS server configuration from PEM files, for HTTPS and WSS.
//!
//! Loaded at start (a bad file is a start-up error) and again on SIGUSR1
//! (a bad file keeps the old configuration).

use std::{path::Path, sync::Arc};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no private key.
    #[error("cannot read a private key from {path}: {reason}")]
    PrivateKey {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("invalid certificate and key: {0}")]
    Rejected(#[from] rustls::Error),
}

/// A rustls server configuration for `certificate_chain` and `private_key`
/// (PEM), offering the ALPN protocols given, on ring's default provider.
pub fn load_server_config(
    certificate_chain: &Path,
    private_key: &Path,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    load_server_config_with_provider(certificate_chain, private_key, alpn, provider)
}

/// As [`load_server_config`], with the given crypto provider.
pub fn load_server_config_with_provider(
    certificate_chain: &Path,
    private_key: &Path,
    alpn: &[&[u8]],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ServerConfig, TlsError> {
    let cert_error = |reason: String| TlsError::Certificates {
        path: certificate_chain.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(certificate_chain)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| TlsError::PrivateKey {
        path: private_key.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let err = load_server_config(Path::new("/nonexistent/cert.pem"), Path::new("/x"), &[])
            .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("aquatic-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a pem file\n").expect("write");
        let err = load_server_config(&path, &path, &[]).expect_err("no certificate");
        assert!(matches!(err, TlsError::Certificates { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
