//! Calls from this node to other nodes (Raft RPCs, forwarded publishes and
//! admin requests): lazily connected channels, cached per address. With
//! `--grpc-tls` every call goes over mutual TLS with this node's certificate
//! (its `herald://node/<id>` identity is its credential); otherwise, on a
//! plaintext development cluster, each call carries this node's `node` key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::TlsFiles;

/// Adds `authorization: apikey <key>` to every outgoing call.
#[derive(Clone)]
pub struct ApiKeyMetadata(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for ApiKeyMetadata {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, ApiKeyMetadata>;
/// Raft RPC client.
pub type RaftClient = herald_proto::v1::raft_client::RaftClient<Authed>;
/// Publisher client.
pub type PublisherClient = herald_proto::v1::publisher_client::PublisherClient<Authed>;
/// Admin client.
pub type AdminClient = herald_proto::v1::admin_client::AdminClient<Authed>;

/// Outbound connection pool; cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    key: ApiKeyMetadata,
    tls: Option<ClientTlsConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Client TLS towards nodes: trust the cluster CA, expect the node DNS name
/// [`crate::peer::tls::SERVER_NAME`], present `cert` and `key`.
pub fn client_tls(files: &TlsFiles) -> std::io::Result<ClientTlsConfig> {
    let ca = std::fs::read(&files.ca)?;
    let cert = std::fs::read(&files.cert)?;
    let key = std::fs::read(&files.key)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(crate::peer::tls::SERVER_NAME))
}

impl Outbound {
    /// Plaintext calls carrying `api_key` when given.
    pub fn new(api_key: Option<&str>) -> Self {
        let key = api_key.and_then(|k| MetadataValue::try_from(format!("apikey {k}")).ok());
        Self {
            key: ApiKeyMetadata(key),
            tls: None,
            channels: Arc::default(),
        }
    }

    /// Calls over mutual TLS, the certificate being the credential.
    pub fn with_tls(tls: ClientTlsConfig) -> Self {
        Self {
            key: ApiKeyMetadata(None),
            tls: Some(tls),
            channels: Arc::default(),
        }
    }

    /// As the node's configuration says: mutual TLS with `--grpc-tls`,
    /// else plaintext with the first `node` key.
    pub fn for_node(config: &crate::config::NodeConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        match (&config.tls, config.grpc_tls) {
            (Some(files), true) => Ok(Self::with_tls(
                client_tls(files).context("reading the TLS files")?,
            )),
            _ => Ok(Self::new(
                config
                    .api_keys
                    .iter()
                    .find(|k| k.scopes().contains(crate::grpc::auth::Scope::Node))
                    .map(|k| k.secret()),
            )),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().expect("outbound lock poisoned");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS towards {addr}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let c = endpoint.connect_lazy();
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Raft client for a peer.
    pub fn raft(&self, addr: &str) -> Result<RaftClient, String> {
        let c = self.channel(addr)?;
        Ok(
            herald_proto::v1::raft_client::RaftClient::with_interceptor(c, self.key.clone())
                .max_decoding_message_size(256 * 1024 * 1024)
                .max_encoding_message_size(256 * 1024 * 1024),
        )
    }

    /// Publisher client for a peer.
    pub fn publisher(&self, addr: &str) -> Result<PublisherClient, String> {
        Ok(
            herald_proto::v1::publisher_client::PublisherClient::with_interceptor(
                self.channel(addr)?,
                self.key.clone(),
            )
            .max_decoding_message_size(herald_proto::limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(herald_proto::limits::MAX_MESSAGE_BYTES),
        )
    }

    /// Admin client for a peer.
    pub fn admin(&self, addr: &str) -> Result<AdminClient, String> {
        Ok(
            herald_proto::v1::admin_client::AdminClient::with_interceptor(
                self.channel(addr)?,
                self.key.clone(),
            ),
        )
    }
}
