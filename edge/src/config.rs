//! The edge's configuration: one typed struct parsed from flags (each with a
//! `HERALD_*` environment twin), then validated as a whole into
//! [`Settings`] before any socket is bound. Owns every default and every
//! limit; it never touches the network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::{AuthError, Verifier};

/// `herald-edge` flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herald-edge",
    version,
    about = "Herald edge: WebSocket and SSE for clients"
)]
pub struct Config {
    /// Address for WebSocket (`/connection/websocket`) and SSE
    /// (`/connection/sse`).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Address for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "HERALD_HTTP_LISTEN", default_value = "127.0.0.1:8001")]
    pub http_listen: SocketAddr,
    /// Nodes to link to (`host:port` of their gRPC API), tried in order; on
    /// failure the edge moves to the next.
    #[arg(long, env = "HERALD_NODES", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// API key the edge presents to the nodes: an `edge` key of a
    /// plaintext (development) cluster. With `--tls-cert` the certificate
    /// is the credential instead.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM file of the cluster CA: link to the nodes over TLS (`https://`),
    /// trusting only it. Required when a node is given as `https://`.
    #[arg(long, env = "HERALD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate of this edge, signed by the cluster CA, carrying the
    /// URI `herald://edge`: what lets it open an EdgeLink on a TLS cluster.
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The DNS name node certificates carry.
    #[arg(long, env = "HERALD_TLS_SERVER_NAME", default_value = "herald-node")]
    pub tls_server_name: String,
    /// HMAC secret for HS256 client tokens, at least 32 bytes.
    #[arg(long, env = "HERALD_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM public key (RSA for RS256 or EC P-256 for ES256) for client tokens.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file (RSA / EC keys selected by the token's `kid`).
    #[arg(long, env = "HERALD_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Expected `aud` claim, when set.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Expected `iss` claim, when set.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Accept tokens without an `exp` claim (they never expire). Off by
    /// default: a token without `exp` is refused (disconnect 3500).
    #[arg(long, env = "HERALD_JWT_ALLOW_NO_EXP")]
    pub jwt_allow_no_exp: bool,
    /// Cookie that may carry the connection token.
    #[arg(long, env = "HERALD_TOKEN_COOKIE", default_value = "herald_token")]
    pub token_cookie: String,
    /// Origins allowed to open connections (`https://app.example.com`);
    /// `*` allows any, but the token cookie is then still read only from
    /// requests without an `Origin`, same-host or listed origins. Requests
    /// without an `Origin` header (non-browser clients) are always
    /// allowed. Default: only requests without one and same-host origins.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Accept connections without a token.
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Channel patterns (`*` wildcard) anonymous clients may subscribe to
    /// (none unless listed).
    #[arg(long, env = "HERALD_ANONYMOUS_CHANNELS", value_delimiter = ',')]
    pub anonymous_channels: Vec<String>,
    /// Let anonymous clients also read the history of their channels.
    #[arg(long, env = "HERALD_ANONYMOUS_HISTORY")]
    pub anonymous_history: bool,
    /// Bytes queued towards one client before it is disconnected as a slow
    /// consumer (code 3008).
    #[arg(long, env = "HERALD_CLIENT_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub client_queue_bytes: usize,
    /// Largest WebSocket message (and frame) accepted from a client.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,
    /// Commands one connection may send per second, on average; beyond it
    /// (and its burst) each command is answered with error 111.
    #[arg(long, env = "HERALD_CLIENT_COMMAND_RATE", default_value_t = 100)]
    pub client_command_rate: u32,
    /// Commands a connection may send at once above its rate.
    #[arg(long, env = "HERALD_CLIENT_COMMAND_BURST", default_value_t = 200)]
    pub client_command_burst: u32,
    /// Commands of one connection waiting on the cluster at once (publish,
    /// history, presence); beyond it error 111.
    #[arg(long, env = "HERALD_CLIENT_CLUSTER_CALLS", default_value_t = 16)]
    pub client_cluster_calls: usize,
    /// Channels one connection may subscribe to.
    #[arg(
        long,
        env = "HERALD_MAX_CHANNELS_PER_CONNECTION",
        default_value_t = 128
    )]
    pub max_channels_per_connection: usize,
    /// Connections this edge accepts (0 = unlimited).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Connections one user (`sub`) may hold on this edge (0 = unlimited).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", default_value_t = 0)]
    pub max_connections_per_user: usize,
    /// New connections accepted per second (0 = unlimited).
    #[arg(long, env = "HERALD_CONNECTION_RATE", default_value_t = 0)]
    pub connection_rate: u32,
    /// Most publications one subscribe recovers; a client further behind is
    /// told `recovered: false`.
    #[arg(long, env = "HERALD_RECOVER_MAX", default_value_t = 300)]
    pub recover_max: u32,
    /// Seconds between server pings; a client that does not answer within
    /// the same time again is disconnected (code 3012).
    #[arg(long, env = "HERALD_PING_INTERVAL_SECS", default_value_t = 25)]
    pub ping_interval_secs: u64,
    /// Seconds a client has to send its connect command.
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub connect_timeout_secs: u64,
    /// Seconds a client has to send a whole HTTP request head (the
    /// upgrade or SSE request) after connecting or after its previous
    /// request; then the socket is closed.
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Seconds a write to a client socket (WebSocket or SSE) may stay
    /// blocked (a peer that stopped reading) before the socket is closed.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_SECS", default_value_t = 10)]
    pub write_timeout_secs: u64,
    /// Seconds a stopping edge waits for its clients to leave.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    pub shutdown_grace_secs: u64,
    /// `RUST_LOG`-style log filter.
    #[arg(long, env = "HERALD_LOG", default_value = "info")]
    pub log: String,
}

/// A configuration error, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value the edge cannot run with.
    #[error("--{field}: {message}")]
    Invalid {
        /// The flag's name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A key file could not be read or parsed.
    #[error("--{field}: {source}")]
    Key {
        /// The flag's name.
        field: &'static str,
        /// The cause.
        source: AuthError,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Connection and message limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`Config::client_queue_bytes`].
    pub client_queue_bytes: usize,
    /// See [`Config::max_message_bytes`].
    pub max_message_bytes: usize,
    /// See [`Config::max_channels_per_connection`].
    pub max_channels_per_connection: usize,
    /// See [`Config::max_connections`].
    pub max_connections: usize,
    /// See [`Config::max_connections_per_user`].
    pub max_connections_per_user: usize,
    /// See [`Config::connection_rate`].
    pub connection_rate: u32,
    /// See [`Config::recover_max`].
    pub recover_max: u32,
    /// See [`Config::ping_interval_secs`].
    pub ping_interval: Duration,
    /// See [`Config::connect_timeout_secs`].
    pub connect_timeout: Duration,
    /// See [`Config::client_command_rate`].
    pub command_rate: u32,
    /// See [`Config::client_command_burst`].
    pub command_burst: u32,
    /// See [`Config::client_cluster_calls`].
    pub cluster_calls: usize,
    /// See [`Config::header_read_timeout_secs`].
    pub header_read_timeout: Duration,
    /// See [`Config::write_timeout_secs`].
    pub write_timeout: Duration,
}

/// Origin policy against cross-site WebSocket hijacking.
#[derive(Debug, Clone)]
pub enum Origins {
    /// Any origin.
    Any,
    /// Exactly these (scheme://host[:port], lower case); same-host origins
    /// are always allowed.
    List(Vec<String>),
}

/// The validated configuration the edge runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`Config::listen`].
    pub listen: SocketAddr,
    /// See [`Config::http_listen`].
    pub http_listen: SocketAddr,
    /// Node gRPC endpoints as `http://host:port`.
    pub nodes: Vec<String>,
    /// See [`Config::api_key`].
    pub api_key: Option<String>,
    /// TLS towards the nodes, from [`Config::tls_ca`] and the edge's
    /// certificate.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Token verification.
    pub verifier: Verifier,
    /// See [`Config::token_cookie`].
    pub token_cookie: String,
    /// See [`Config::allowed_origins`].
    pub origins: Origins,
    /// See [`Config::allow_anonymous`].
    pub allow_anonymous: bool,
    /// See [`Config::anonymous_channels`].
    pub anonymous_channels: Vec<String>,
    /// See [`Config::anonymous_history`].
    pub anonymous_history: bool,
    /// Limits.
    pub limits: Limits,
    /// See [`Config::shutdown_grace_secs`].
    pub shutdown_grace: Duration,
}

impl Config {
    /// Check every field and load key files.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        if self.nodes.is_empty() {
            return Err(invalid("nodes", "at least one node is required"));
        }
        let tls = self.tls()?;
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let n = n.trim();
            if n.is_empty() {
                return Err(invalid("nodes", "empty entry"));
            }
            // Never fall back to cleartext: an https:// node without a CA to
            // verify it, or a plain http:// node next to TLS flags, is an error.
            let url = match (n.split_once("://").map(|(s, _)| s), &tls) {
                (Some("https"), None) => {
                    return Err(invalid(
                        "tls-ca",
                        format!("required to reach `{n}` over TLS"),
                    ));
                }
                (Some("http"), Some(_)) => {
                    return Err(invalid(
                        "nodes",
                        format!(
                            "`{n}` is cleartext, but TLS flags are given; use https:// or host:port"
                        ),
                    ));
                }
                (Some("http" | "https"), _) => n.to_string(),
                (Some(_), _) => {
                    return Err(invalid(
                        "nodes",
                        format!("`{n}`: scheme must be http or https"),
                    ));
                }
                (None, Some(_)) => format!("https://{n}"),
                (None, None) => format!("http://{n}"),
            };
            if url.parse::<axum::http::Uri>().is_err() {
                return Err(invalid("nodes", format!("`{n}` is not host:port")));
            }
            nodes.push(url);
        }
        if let Some(k) = &self.api_key
            && (k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid("api-key", "must be non-empty printable ASCII"));
        }
        let verifier = Verifier::from_sources(
            self.jwt_hs256_secret.as_deref(),
            self.jwt_public_key_file.as_deref(),
            self.jwks_file.as_deref(),
            self.jwt_audience.clone(),
            self.jwt_issuer.clone(),
            !self.jwt_allow_no_exp,
        )
        .map_err(|(field, source)| ConfigError::Key { field, source })?;
        if verifier.is_empty() && !self.allow_anonymous {
            return Err(invalid(
                "jwt-hs256-secret",
                "no token key configured (--jwt-hs256-secret, --jwt-public-key-file or \
                 --jwks-file) and --allow-anonymous not set: nobody could connect",
            ));
        }
        if self.token_cookie.is_empty()
            || !self
                .token_cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "token-cookie",
                "must be a cookie name ([A-Za-z0-9_-]+)",
            ));
        }
        let origins = if self.allowed_origins.iter().any(|o| o.trim() == "*") {
            Origins::Any
        } else {
            let mut list = Vec::new();
            for o in &self.allowed_origins {
                let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
                if !(o.starts_with("http://") || o.starts_with("https://")) || o.len() < 9 {
                    return Err(invalid(
                        "allowed-origins",
                        format!("`{o}` is not scheme://host[:port] or *"),
                    ));
                }
                list.push(o);
            }
            Origins::List(list)
        };
        if self.client_queue_bytes < 4096 {
            return Err(invalid("client-queue-bytes", "must be at least 4096"));
        }
        if self.max_message_bytes < 1024 {
            return Err(invalid("max-message-bytes", "must be at least 1024"));
        }
        if self.max_channels_per_connection == 0 {
            return Err(invalid("max-channels-per-connection", "must be at least 1"));
        }
        if self.recover_max == 0 {
            return Err(invalid("recover-max", "must be at least 1"));
        }
        if self.ping_interval_secs == 0 || self.ping_interval_secs > 3600 {
            return Err(invalid("ping-interval-secs", "must be 1..=3600"));
        }
        if self.connect_timeout_secs == 0 {
            return Err(invalid("connect-timeout-secs", "must be at least 1"));
        }
        if self.client_command_rate == 0 {
            return Err(invalid("client-command-rate", "must be at least 1"));
        }
        if self.client_command_burst == 0 {
            return Err(invalid("client-command-burst", "must be at least 1"));
        }
        if self.client_cluster_calls == 0 {
            return Err(invalid("client-cluster-calls", "must be at least 1"));
        }
        if self.header_read_timeout_secs == 0 {
            return Err(invalid("header-read-timeout-secs", "must be at least 1"));
        }
        if self.write_timeout_secs == 0 {
            return Err(invalid("write-timeout-secs", "must be at least 1"));
        }
        if self.listen == self.http_listen && self.listen.port() != 0 {
            return Err(invalid("http-listen", "must differ from --listen"));
        }
        Ok(Settings {
            listen: self.listen,
            http_listen: self.http_listen,
            nodes,
            api_key: self.api_key.clone(),
            tls,
            verifier,
            token_cookie: self.token_cookie.clone(),
            origins,
            allow_anonymous: self.allow_anonymous,
            anonymous_channels: self
                .anonymous_channels
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            anonymous_history: self.anonymous_history,
            limits: Limits {
                client_queue_bytes: self.client_queue_bytes,
                max_message_bytes: self.max_message_bytes,
                max_channels_per_connection: self.max_channels_per_connection,
                max_connections: self.max_connections,
                max_connections_per_user: self.max_connections_per_user,
                connection_rate: self.connection_rate,
                recover_max: self.recover_max,
                ping_interval: Duration::from_secs(self.ping_interval_secs),
                connect_timeout: Duration::from_secs(self.connect_timeout_secs),
                command_rate: self.client_command_rate,
                command_burst: self.client_command_burst,
                cluster_calls: self.client_cluster_calls,
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                write_timeout: Duration::from_secs(self.write_timeout_secs),
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        })
    }
}

impl Config {
    /// The client TLS configuration from `--tls-*`, files read now.
    fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, ConfigError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |field: &'static str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| invalid(field, format!("{}: {e}", p.display())))
        };
        let Some(ca) = &self.tls_ca else {
            if self.tls_cert.is_some() || self.tls_key.is_some() {
                return Err(invalid("tls-ca", "required with --tls-cert / --tls-key"));
            }
            return Ok(None);
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("tls-ca", ca)?))
            .domain_name(self.tls_server_name.clone());
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read("tls-cert", cert)?,
                    read("tls-key", key)?,
                ));
            }
            (None, None) => {}
            (Some(_), None) => return Err(invalid("tls-key", "required with --tls-cert")),
            (None, Some(_)) => return Err(invalid("tls-cert", "required with --tls-key")),
        }
        Ok(Some(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("herald-edge").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn errors_name_the_field() {
        let c = parse(&[
            "--nodes",
            "127.0.0.1:1",
            "--allow-anonymous",
            "--recover-max",
            "0",
        ]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("--recover-max"), "{e}");
        let c = parse(&["--nodes", "127.0.0.1:1"]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("--jwt-hs256-secret"), "{e}");
        let c = parse(&[
            "--nodes",
            "a:1",
            "--allow-anonymous",
            "--allowed-origins",
            "foo",
        ]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("--allowed-origins"), "{e}");
        let c = parse(&[
            "--nodes",
            "a:1",
            "--jwt-public-key-file",
            "/nonexistent.pem",
        ]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("--jwt-public-key-file"), "{e}");
    }

    #[test]
    fn defaults_validate() {
        let s = parse(&[
            "--nodes",
            "127.0.0.1:7000,127.0.0.1:7001",
            "--jwt-hs256-secret",
            "0123456789abcdef0123456789abcdef",
        ])
        .validate()
        .unwrap();
        assert_eq!(
            s.nodes,
            vec!["http://127.0.0.1:7000", "http://127.0.0.1:7001"]
        );
        assert_eq!(s.limits.client_queue_bytes, 1 << 20);
        // Safe defaults: anonymous clients get no channel, no history.
        assert!(s.anonymous_channels.is_empty());
        assert!(!s.anonymous_history);
    }

    #[test]
    fn a_short_hs256_secret_is_refused_at_start() {
        let c = parse(&["--nodes", "a:1", "--jwt-hs256-secret", "too-short"]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("--jwt-hs256-secret"), "{e}");
        assert!(e.contains("32 bytes"), "{e}");
    }

    #[test]
    fn help_never_prints_secrets_from_the_environment() {
        use clap::CommandFactory;
        let cmd = Config::command();
        let secrets: Vec<_> = cmd
            .get_arguments()
            .filter(|a| {
                let id = a.get_id().as_str();
                id == "api_key" || id.contains("secret")
            })
            .collect();
        assert_eq!(secrets.len(), 2);
        for a in secrets {
            assert!(
                a.is_hide_env_values_set(),
                "--help would print the value of {:?}",
                a.get_env()
            );
        }
    }

    #[test]
    fn tls_is_never_silently_dropped() {
        let e = parse(&["--nodes", "https://n:1", "--allow-anonymous"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--tls-ca"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked until a connection").unwrap();
        let ca = ca.to_str().unwrap();
        let e = parse(&["--nodes", "http://n:1", "--tls-ca", ca, "--allow-anonymous"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--nodes"), "{e}");
        let s = parse(&[
            "--nodes",
            "n:1,https://m:2",
            "--tls-ca",
            ca,
            "--allow-anonymous",
        ])
        .validate()
        .unwrap();
        assert_eq!(s.nodes, vec!["https://n:1", "https://m:2"]);
        assert!(s.tls.is_some());
        let e = parse(&["--nodes", "n:1", "--tls-cert", ca, "--allow-anonymous"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--tls-ca"), "{e}");
    }
}
