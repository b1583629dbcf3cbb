//! gRPC clients for the nodes under test, authenticated the way a backend
//! would be (`authorization: apikey <key>`), plus the retry discipline a
//! careful publisher follows: same idempotency key, next node, until a
//! deadline — and only after the failures `docs/protocol.md` calls safe to
//! retry. Retrying anything else would hide a node's bug (a handler panic
//! breaks the call the way a transport failure does) behind a later
//! success.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald_proto::v1::admin_client::AdminClient;
use herald_proto::v1::publisher_client::PublisherClient;
use herald_proto::v1::{PublishRequest, PublishResponse};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// A `Publisher` client with the API key interceptor.
pub type Publisher = PublisherClient<InterceptedService<Channel, ApiKey>>;

/// An `Admin` client with the API key interceptor.
pub type Admin = AdminClient<InterceptedService<Channel, ApiKey>>;

/// Adds `authorization: apikey <key>` to every request; `None` sends no
/// credentials at all (to test that the node refuses them).
#[derive(Debug, Clone)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl ApiKey {
    /// Authenticate with `key`, or not at all.
    ///
    /// # Panics
    /// When `key` is not valid ASCII metadata.
    pub fn new(key: Option<&str>) -> Self {
        Self(key.map(|k| {
            format!("apikey {k}")
                .parse()
                .expect("API key must be printable ASCII")
        }))
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// A lazily connected channel to `addr`: creating it never fails, and a dead
/// node shows up as `UNAVAILABLE` on the first call, which is exactly what a
/// publisher rotating between nodes needs. Must be called inside a tokio
/// runtime.
///
/// The per-request timeout is a hang guard (a paused node never answers).
pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

/// [`channel`] over TLS when `ca` is given (a node started with
/// `--grpc-tls`), trusting `ca` and expecting the node DNS name
/// `herald-node`.
pub fn channel_tls(addr: SocketAddr, ca: Option<&std::path::Path>) -> Channel {
    let Some(ca) = ca else {
        return channel(addr);
    };
    let pem = std::fs::read(ca).expect("reading the cluster CA");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .domain_name("herald-node");
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("a socket address is a valid URI")
        .tls_config(tls)
        .expect("TLS client configuration")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

/// A `Publisher` client for the node at `addr`, over TLS trusting `ca`
/// when given.
pub fn publisher_tls(
    addr: SocketAddr,
    key: Option<&str>,
    ca: Option<&std::path::Path>,
) -> Publisher {
    PublisherClient::with_interceptor(channel_tls(addr, ca), ApiKey::new(key))
        .max_decoding_message_size(64 * 1024 * 1024)
}

/// An `Admin` client for the node at `addr`, over TLS trusting `ca` when
/// given.
pub fn admin_tls(addr: SocketAddr, key: Option<&str>, ca: Option<&std::path::Path>) -> Admin {
    AdminClient::with_interceptor(channel_tls(addr, ca), ApiKey::new(key))
}

/// A `Publisher` client for the node at `addr`.
pub fn publisher_at(addr: SocketAddr, key: Option<&str>) -> Publisher {
    PublisherClient::with_interceptor(channel(addr), ApiKey::new(key))
        .max_decoding_message_size(64 * 1024 * 1024)
}

/// An `Admin` client for the node at `addr`.
pub fn admin_at(addr: SocketAddr, key: Option<&str>) -> Admin {
    AdminClient::with_interceptor(channel(addr), ApiKey::new(key))
}

/// The `google.rpc.ErrorInfo.reason` of a Herald error, if it carries one.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The `google.rpc.ErrorInfo.metadata` of a Herald error (empty if none).
pub fn error_metadata(status: &Status) -> HashMap<String, String> {
    status
        .get_details_error_info()
        .map(|info| info.metadata)
        .unwrap_or_default()
}

/// Whether `docs/protocol.md` says a publish that failed this way may be
/// retried with the same idempotency key: `UNAVAILABLE` (every documented
/// retryable reason — `NO_LEADER`, `NO_QUORUM`, `COMMIT_TIMEOUT`,
/// `LEADER_STEPPING_DOWN`, `LEADER_UNREACHABLE`, `STORAGE_FAILED`,
/// `RAFT_STOPPED` — and a refused connection), a timeout, or `CANCELLED`
/// without Herald's details (the client's connection closed before the
/// answer: a transport failure whose outcome is unknown, never what a
/// handler panic looks like). Not `UNKNOWN` or `INTERNAL`: see
/// [`is_broken_call`].
pub fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Cancelled => reason_of(status).is_none(),
        _ => false,
    }
}

/// Whether a call broke without an answer from Herald: `UNKNOWN` or
/// `INTERNAL` without Herald's error details. A node killed mid-call looks
/// like this (its connection reset), and so does a node whose handler
/// panicked (the stream reset). [`RotatingPublisher`] tells them apart by
/// asking the node whether it is still there.
pub fn is_broken_call(status: &Status) -> bool {
    matches!(status.code(), Code::Unknown | Code::Internal) && reason_of(status).is_none()
}

/// A publisher that retries on retryable errors ([`is_retryable`]) with the
/// same request (so the same idempotency key), moving to the next node each
/// time, until a deadline. A broken call ([`is_broken_call`]) is retried
/// too: its outcome is unknown, and a retry with the same key is what the
/// idempotency window makes safe. Telling a node killed mid-call from a
/// handler that panicked is left to the log scan (every scenario fails on
/// a `panicked` line in any node's or edge's log), because asking the node
/// whether it is still there races with scenarios that restart it at once.
/// Any other error is returned at once.
#[derive(Debug, Clone)]
pub struct RotatingPublisher {
    clients: Vec<(u64, Publisher)>,
    next: usize,
    attempt_timeout: Duration,
    /// Retried attempts so far, across all publishes.
    pub retries: u64,
}

/// Why [`RotatingPublisher::publish`] gave up.
#[derive(Debug, Clone)]
pub struct PublishFailure {
    /// The last error seen.
    pub last: Status,
    /// Attempts made for this publish.
    pub attempts: u32,
    /// Whether the deadline ran out (otherwise the error was not retryable).
    pub timed_out: bool,
}

impl PublishFailure {
    /// Whether the publish may or may not have been stored, so re-sending
    /// it with its key later is what the protocol prescribes: the publisher
    /// ran out of patience on retryable errors. Otherwise a node answered
    /// something final, or broke the call while alive.
    pub fn outcome_unknown(&self) -> bool {
        self.timed_out && (is_retryable(&self.last) || is_broken_call(&self.last))
    }
}

impl std::fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} after {} attempt(s){}: {:?} {} (reason {:?})",
            if self.timed_out { "gave up" } else { "failed" },
            self.attempts,
            if self.timed_out { " (deadline)" } else { "" },
            self.last.code(),
            self.last.message(),
            reason_of(&self.last)
        )
    }
}

impl std::error::Error for PublishFailure {}

impl RotatingPublisher {
    /// Rotate over `clients` (node id, client), starting at index `start`.
    ///
    /// # Panics
    /// When `clients` is empty.
    pub fn new(clients: Vec<(u64, Publisher)>, start: usize) -> Self {
        assert!(
            !clients.is_empty(),
            "a rotating publisher needs at least one node"
        );
        let next = start % clients.len();
        Self {
            clients,
            next,
            attempt_timeout: Duration::from_secs(10),
            retries: 0,
        }
    }

    /// Give up on one attempt (and retry elsewhere) after `timeout`; 10 s
    /// unless set. A frozen node accepts connections but never answers, so
    /// without this a publisher would wait for the channel's own timeout.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The node the next attempt goes to.
    pub fn current_node(&self) -> u64 {
        self.clients[self.next].0
    }

    /// Publish `req`, retrying as described on the type, for at most `patience`.
    pub async fn publish(
        &mut self,
        req: PublishRequest,
        patience: Duration,
    ) -> Result<PublishResponse, PublishFailure> {
        let deadline = Instant::now() + patience;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let client = &mut self.clients[self.next].1;
            let attempt = tokio::time::timeout(self.attempt_timeout, client.publish(req.clone()));
            let result = match attempt.await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer from node {} within {:?}",
                    self.clients[self.next].0, self.attempt_timeout
                ))),
            };
            let retry = match &result {
                Ok(_) => false,
                Err(status) if is_retryable(status) => true,
                Err(status) if is_broken_call(status) => true,
                Err(_) => false,
            };
            match result {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) if retry => {
                    self.next = (self.next + 1) % self.clients.len();
                    if Instant::now() >= deadline {
                        return Err(PublishFailure {
                            last: status,
                            attempts,
                            timed_out: true,
                        });
                    }
                    self.retries += 1;
                    // Every node may be down or electing: back off a little so
                    // retries do not spin on a refused connection.
                    let pause = Duration::from_millis(20 * u64::from(attempts.min(10)));
                    tokio::time::sleep(pause).await;
                }
                Err(status) => {
                    return Err(PublishFailure {
                        last: status,
                        attempts,
                        timed_out: false,
                    });
                }
            }
        }
    }
}

/// `GET path` on a node's operations listener (`/healthz`, `/readyz`,
/// `/metrics`) over plain HTTP/1.1: the status code and the body. A hang
/// guard of 10 s applies.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let (status, _, body) = http_exchange(addr, path).await?;
    Ok((status, body))
}

/// The wall-clock time the HTTP server at `addr` states in the `Date`
/// header of its answer to `GET path` (second resolution): how a test sees
/// a process's wall clock from outside.
pub async fn http_date(addr: SocketAddr, path: &str) -> std::io::Result<std::time::SystemTime> {
    let (_, head, _) = http_exchange(addr, path).await?;
    let date = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("date")
                .then(|| value.trim().to_string())
        })
        .ok_or_else(|| std::io::Error::other(format!("no Date header from {addr}: {head:?}")))?;
    httpdate::parse_http_date(&date)
        .map_err(|e| std::io::Error::other(format!("Date {date:?} from {addr}: {e}")))
}

/// `GET path`: the status, the head and the (dechunked) body.
async fn http_exchange(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("GET {path} on {addr}"),
            )
        })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, head.to_string(), body))
}

/// Decode a chunked HTTP/1.1 body (enough for the node's small responses).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    fn with_reason(code: Code, reason: &str) -> Status {
        Status::with_error_details(
            code,
            "from herald",
            ErrorDetails::with_error_info(reason, "herald.v1", HashMap::new()),
        )
    }

    #[test]
    fn only_what_the_protocol_calls_safe_is_retried() {
        assert!(is_retryable(&with_reason(Code::Unavailable, "NO_QUORUM")));
        assert!(is_retryable(&Status::unavailable("connection refused")));
        assert!(is_retryable(&Status::deadline_exceeded("no answer")));
        // The client's connection closed before the answer.
        assert!(is_retryable(&Status::cancelled("operation was canceled")));
        assert!(!is_retryable(&with_reason(Code::Cancelled, "SOMETHING")));
        // What a handler panic or a node killed mid-call looks like: not
        // retried blindly, only after the node is found gone.
        for broken in [
            Status::unknown("h2 protocol error"),
            Status::internal("stream reset"),
        ] {
            assert!(!is_retryable(&broken), "{broken:?}");
            assert!(is_broken_call(&broken), "{broken:?}");
        }
        let answered = with_reason(Code::Internal, "SOMETHING");
        assert!(!is_retryable(&answered) && !is_broken_call(&answered));
        assert!(!is_retryable(&with_reason(
            Code::InvalidArgument,
            "CHANNEL_INVALID"
        )));
    }

    #[test]
    fn only_a_patience_run_out_on_retryable_errors_leaves_the_outcome_unknown() {
        let failure = |last: Status, timed_out| PublishFailure {
            last,
            attempts: 3,
            timed_out,
        };
        assert!(failure(with_reason(Code::Unavailable, "NO_LEADER"), true).outcome_unknown());
        assert!(!failure(Status::unknown("reset by a live node"), false).outcome_unknown());
        assert!(
            !failure(with_reason(Code::InvalidArgument, "CHANNEL_INVALID"), false)
                .outcome_unknown()
        );
    }
}
