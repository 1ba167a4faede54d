//! A throwaway certificate authority for TLS tests: a CA certificate and a server certificate it
//! signed for the given names (DNS names or IP addresses), with rustls server settings.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TestCa {
    /// The CA certificate (a trust anchor for clients).
    pub ca: CertificateDer<'static>,
    /// The server's settings: its certificate for the names, then the CA's.
    pub server: Arc<rustls::ServerConfig>,
    /// The server certificate and its private key as PEM (for servers configured by file).
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// A client certificate it signed, common name `sandgraph` (the test databases' user), and
    /// its private key, as PEM.
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl TestCa {
    pub fn new(names: &[&str]) -> TestCa {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Sandgraph test-only CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "sandgraph");
        let client = client_params.signed_by(&client_key, &ca).unwrap();
        TestCa {
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            ca: ca.der().clone(),
            server: Arc::new(server),
            server_cert_pem: leaf.pem(),
            server_key_pem: leaf_key.serialize_pem(),
        }
    }

    /// The CA certificate as a PEM file's text.
    pub fn ca_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.ca);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }
}
