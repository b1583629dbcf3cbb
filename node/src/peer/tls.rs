//! Mutual TLS for the QUIC plane: every node presents a certificate signed
//! by the cluster CA and accepts only peers that do the same. Node
//! certificates carry the DNS name [`SERVER_NAME`]; nodes dial each other by
//! address and verify that name, so one certificate per node works whatever
//! its address.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The DNS name every node certificate must carry.
pub const SERVER_NAME: &str = "herald-node";
/// ALPN protocol of the delivery plane.
pub const ALPN: &[u8] = b"herald-peer/1";

/// A TLS set-up problem, naming the file at fault.
#[derive(Debug, thiserror::Error)]
#[error("{field} {path}: {reason}")]
pub struct TlsError {
    /// The flag.
    pub field: &'static str,
    /// The file.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// Server and client QUIC configurations from PEM files.
pub struct PeerTls {
    /// For the listening endpoint.
    pub server: quinn::ServerConfig,
    /// For dialing peers.
    pub client: quinn::ClientConfig,
    /// Bind every connection to the node id its certificate names (see
    /// [`crate::peer`]). Off only with `--tls-shared-node-cert`.
    pub bind_node_ids: bool,
}

fn err(field: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError {
        field,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl PeerTls {
    /// Load the CA, this node's certificate chain and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| err("--tls-ca", ca, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| err("--tls-ca", ca, e))?;
        if ca_certs.is_empty() {
            return Err(err("--tls-ca", ca, "no certificate in file"));
        }
        for c in ca_certs {
            roots.add(c).map_err(|e| err("--tls-ca", ca, e))?;
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| err("--tls-cert", cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| err("--tls-cert", cert, e))?;
        if chain.is_empty() {
            return Err(err("--tls-cert", cert, "no certificate in file"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err("--tls-key", key, e))?;

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| err("--tls-ca", ca, e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err("--tls-cert", cert, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(|e| err("--tls-cert", cert, e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err("--tls-cert", cert, e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| err("--tls-key", key, e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        let server = QuicServerConfig::try_from(server).map_err(|e| err("--tls-cert", cert, e))?;
        let client = QuicClientConfig::try_from(client).map_err(|e| err("--tls-cert", cert, e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
        transport.max_idle_timeout(Some(
            std::time::Duration::from_secs(10)
                .try_into()
                .expect("10 s is a valid idle timeout"),
        ));
        transport.max_concurrent_uni_streams(256u32.into());
        let transport = Arc::new(transport);
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(transport);
        Ok(Self {
            server,
            client,
            bind_node_ids: true,
        })
    }
}
