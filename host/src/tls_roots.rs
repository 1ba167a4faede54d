//! The TLS trust the host's clients share: the public web PKI (Mozilla's roots, as
//! webpki-roots ships them) plus CA certificates an operator adds. Tool egress over `https`,
//! trace export and the journal's PostgreSQL connections build their rustls settings here.

use std::sync::Arc;

/// TLS client settings: the public roots plus the CA certificates the operator adds (an internal
/// CA, a TLS-inspecting proxy's). Built once and shared by every connection.
#[derive(Clone)]
pub struct TlsRoots(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsRoots")
    }
}

/// Why operator CA certificates cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsRootsError {
    #[error("CA file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("CA file {path} holds no PEM `CERTIFICATE` block")]
    Empty { path: String },
    #[error("CA certificate {index} of {source_name} is not a usable trust anchor: {reason}")]
    Anchor {
        source_name: String,
        index: usize,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// CA certificates from the operator, each with where it came from (for errors).
pub type ExtraRoots = Vec<(String, rustls::pki_types::CertificateDer<'static>)>;

impl TlsRoots {
    /// The public roots plus `extra`.
    pub fn new(extra: &ExtraRoots) -> Result<TlsRoots, TlsRootsError> {
        TlsRoots::build(extra, None)
    }

    /// [`TlsRoots::new`], presenting `chain` (the client's certificate first) and its `key` to
    /// servers that ask for a client certificate.
    pub fn with_client_identity(
        extra: &ExtraRoots,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<TlsRoots, TlsRootsError> {
        TlsRoots::build(extra, Some((chain, key)))
    }

    fn build(
        extra: &ExtraRoots,
        identity: Option<(
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
    ) -> Result<TlsRoots, TlsRootsError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        for (index, (source_name, der)) in extra.iter().enumerate() {
            roots.add(der.clone()).map_err(|e| TlsRootsError::Anchor {
                source_name: source_name.clone(),
                index: index + 1,
                reason: e.to_string(),
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsRootsError::Config(e.to_string()))?
        .with_root_certificates(roots);
        let config = match identity {
            None => config.with_no_client_auth(),
            Some((chain, key)) => config
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsRootsError::Config(format!("the client certificate: {e}")))?,
        };
        Ok(TlsRoots(Arc::new(config)))
    }

    /// The rustls client settings (for other TLS clients of the host, such as trace export).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.0.clone()
    }

    /// Every `CERTIFICATE` block of each PEM file, in order.
    pub fn read_pem_files(paths: &[std::path::PathBuf]) -> Result<ExtraRoots, TlsRootsError> {
        let mut roots = Vec::new();
        for path in paths {
            roots.extend(TlsRoots::read_pem_file(path)?);
        }
        Ok(roots)
    }

    /// Every `CERTIFICATE` block of a PEM file.
    pub fn read_pem_file(path: &std::path::Path) -> Result<ExtraRoots, TlsRootsError> {
        use rustls::pki_types::pem::PemObject;
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TlsRootsError::File {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
            .map(|c| c.map(|der| (shown.clone(), der)))
            .collect::<Result<ExtraRoots, _>>()
            .map_err(|e| TlsRootsError::File {
                path: shown.clone(),
                reason: format!("not PEM: {e}"),
            })?;
        if certs.is_empty() {
            return Err(TlsRootsError::Empty { path: shown });
        }
        Ok(certs)
    }
}

impl Default for TlsRoots {
    fn default() -> Self {
        TlsRoots::new(&Vec::new()).expect("the public roots alone always build")
    }
}
