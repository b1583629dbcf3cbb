//! Talking to a node: the connection to `--server`, the interceptor that puts
//! the API key on every call, and the translation of a failed call into the
//! one error shape the CLI prints, `<message> (reason <REASON>)`.
//!
//! Commands never build a channel or read a `Status` themselves, so every
//! command names the unreachable address and the server's stable reason the
//! same way.

use std::fmt;
use std::time::Duration;

use herald_proto::v1::admin_client::AdminClient;
use herald_proto::v1::publisher_client::PublisherClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// How long to wait for the TCP + HTTP/2 handshake before saying the address
/// cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of one call, so a wedged node cannot hang a script forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A node address plus the credentials to call it, as given on the command
/// line. Nothing is dialled until [`Server::connect`].
#[derive(Debug, Clone)]
pub(crate) struct Server {
    addr: String,
    api_key: Option<String>,
    tls_ca: Option<std::path::PathBuf>,
}

impl Server {
    pub(crate) fn new(addr: String, api_key: Option<String>) -> Self {
        Self {
            addr,
            api_key,
            tls_ca: None,
        }
    }

    /// Call over TLS trusting `ca` (the cluster CA), when given.
    pub(crate) fn with_tls_ca(mut self, ca: Option<std::path::PathBuf>) -> Self {
        self.tls_ca = ca;
        self
    }

    /// Dial the node now, so an unreachable address is reported before any
    /// request is built.
    pub(crate) async fn connect(&self) -> Result<Connection, RpcError> {
        let key = ApiKey::new(self.api_key.as_deref())?;
        let channel = endpoint(&self.addr, self.tls_ca.as_deref())?
            .connect()
            .await
            .map_err(|e| RpcError {
                message: format!("could not reach {}: {}", self.addr, chain(&e)),
                reason: code_reason(Code::Unavailable).to_string(),
            })?;
        Ok(Connection {
            addr: self.addr.clone(),
            channel,
            key,
        })
    }

    /// A connection that dials on first use and redials after failures; for
    /// polling nodes that may not be listening yet.
    pub(crate) fn connect_lazy(&self) -> Result<Connection, RpcError> {
        let key = ApiKey::new(self.api_key.as_deref())?;
        let channel = endpoint(&self.addr, self.tls_ca.as_deref())?.connect_lazy();
        Ok(Connection {
            addr: self.addr.clone(),
            channel,
            key,
        })
    }
}

/// The endpoint of `addr`: TLS trusting `ca` when given (never cleartext
/// for an `https://` address).
fn endpoint(addr: &str, ca: Option<&std::path::Path>) -> Result<Endpoint, RpcError> {
    let invalid = |message: String| RpcError {
        message,
        reason: code_reason(Code::InvalidArgument).to_string(),
    };
    let uri = match (addr.split_once("://").map(|(s, _)| s), ca) {
        (Some("https"), None) => {
            return Err(invalid(format!(
                "--server `{addr}` is https://: give the cluster CA with --tls-ca"
            )));
        }
        (Some("http"), Some(_)) => {
            return Err(invalid(format!(
                "--server `{addr}` is cleartext, but --tls-ca is given"
            )));
        }
        (Some(_), _) => addr.to_string(),
        (None, Some(_)) => format!("https://{addr}"),
        (None, None) => format!("http://{addr}"),
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map(|e| e.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT))
        .map_err(|e| invalid(format!("--server `{addr}` is not host:port: {}", chain(&e))))?;
    if let Some(ca) = ca {
        let pem =
            std::fs::read(ca).map_err(|e| invalid(format!("--tls-ca {}: {e}", ca.display())))?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name(crate::certs::NODE_NAME);
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| invalid(format!("--tls-ca {}: {}", ca.display(), chain(&e))))?;
    }
    Ok(endpoint)
}

/// The client type every command uses: a channel whose requests carry the key.
pub(crate) type Authed = InterceptedService<Channel, ApiKey>;

/// An open channel to one node.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    addr: String,
    channel: Channel,
    key: ApiKey,
}

impl Connection {
    pub(crate) fn publisher(&self) -> PublisherClient<Authed> {
        PublisherClient::with_interceptor(self.channel.clone(), self.key.clone())
            .max_decoding_message_size(herald_proto::limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(herald_proto::limits::MAX_MESSAGE_BYTES)
    }

    pub(crate) fn admin(&self) -> AdminClient<Authed> {
        AdminClient::with_interceptor(self.channel.clone(), self.key.clone())
    }

    /// Turn a failed call into the CLI's error: the server's message and its
    /// `ErrorInfo.reason`; without one (the node was never reached, or a proxy
    /// answered), the gRPC code stands in for the reason.
    pub(crate) fn error(&self, status: Status) -> RpcError {
        if let Some(info) = status
            .get_details_error_info()
            .filter(|i| !i.reason.is_empty())
        {
            return RpcError {
                message: status.message().to_string(),
                reason: info.reason,
            };
        }
        let message = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded => {
                format!("could not reach {}: {}", self.addr, status_text(&status))
            }
            _ => status_text(&status),
        };
        RpcError {
            message,
            reason: code_reason(status.code()).to_string(),
        }
    }
}

fn status_text(status: &Status) -> String {
    let mut text = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let rest = chain(source);
        if !rest.is_empty() && !text.contains(&rest) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&rest);
        }
    }
    if text.is_empty() {
        format!("{:?}", status.code())
    } else {
        text
    }
}

/// Adds `authorization: apikey <key>` to each request, when a key is set.
#[derive(Debug, Clone)]
pub(crate) struct ApiKey(Option<AsciiMetadataValue>);

impl ApiKey {
    fn new(key: Option<&str>) -> Result<Self, RpcError> {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Ok(Self(None));
        };
        let bad = || RpcError {
            message: "--api-key must be printable ASCII without spaces".to_string(),
            reason: code_reason(Code::InvalidArgument).to_string(),
        };
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad());
        }
        MetadataValue::try_from(format!("apikey {key}"))
            .map(|v| Self(Some(v)))
            .map_err(|_| bad())
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A call that failed, in the form the CLI prints.
#[derive(Debug, Clone)]
pub(crate) struct RpcError {
    pub(crate) message: String,
    pub(crate) reason: String,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (reason {})", self.message, self.reason)
    }
}

impl std::error::Error for RpcError {}

/// An error and its sources on one line; tonic's top-level transport errors
/// alone ("transport error") do not say what went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The gRPC code in the `SCREAMING_SNAKE_CASE` of the gRPC spec, used as the
/// reason when the server gave none.
fn code_reason(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::ERROR_DOMAIN;
    use tonic_types::{ErrorDetails, StatusExt};

    fn conn() -> Connection {
        Server::new("127.0.0.1:1".into(), Some("k".into()))
            .connect_lazy()
            .unwrap()
    }

    #[tokio::test]
    async fn error_info_reason_wins_over_code() {
        let status = Status::with_error_details(
            Code::Unavailable,
            "no leader elected yet",
            ErrorDetails::with_error_info("NO_LEADER", ERROR_DOMAIN, []),
        );
        let e = conn().error(status);
        assert_eq!(e.to_string(), "no leader elected yet (reason NO_LEADER)");
    }

    #[tokio::test]
    async fn bare_unavailable_names_the_address() {
        let e = conn().error(Status::unavailable("connection refused"));
        assert_eq!(
            e.to_string(),
            "could not reach 127.0.0.1:1: connection refused (reason UNAVAILABLE)"
        );
    }

    #[tokio::test]
    async fn unreachable_address_is_reported_on_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = Server::new(addr.clone(), None).connect().await.unwrap_err();
        assert!(
            e.message.starts_with(&format!("could not reach {addr}")),
            "{e}"
        );
        assert_eq!(e.reason, "UNAVAILABLE");
    }

    #[test]
    fn api_key_must_be_ascii() {
        assert!(ApiKey::new(Some("ключ")).is_err());
        assert!(ApiKey::new(Some("abc")).unwrap().0.is_some());
        assert!(ApiKey::new(Some("")).unwrap().0.is_none());
    }
}
