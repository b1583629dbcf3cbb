//! Who may call what on the gRPC port. A caller proves one or more roles:
//! `publish` and `admin` with an API key (`authorization: apikey <key>`),
//! `node` and `edge` with a client certificate from the cluster CA whose
//! URI names the identity (`herald://node/<id>`, `herald://edge`), or, on a
//! plaintext cluster only, with a key carrying the `node` or `edge` scope.
//! Each RPC needs one role of a fixed set ([`required`]); a caller without
//! one is refused before the service sees the request, with a stable reason
//! (`docs/protocol.md`, `docs/security.md`).
//!
//! This module must never let a key stand in for a certificate on a TLS
//! cluster (the configuration refuses `node`/`edge` keys there), and never
//! grant a role from a certificate the TLS handshake did not verify (tonic
//! only reports verified peer certificates).

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use herald_proto::identity::Identity;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::rejection::Rejection;

/// A role a caller can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Publish, read history and presence, see cluster status.
    Publish,
    /// Change membership, move leadership (the `Admin` service).
    Admin,
    /// Link an edge (`EdgeLink`).
    Edge,
    /// Everything a node asks of another: Raft, forwarded calls, presence
    /// between nodes, joining.
    Node,
}

impl Scope {
    const ALL: [Scope; 4] = [Scope::Publish, Scope::Admin, Scope::Edge, Scope::Node];

    fn bit(self) -> u8 {
        match self {
            Scope::Publish => 1,
            Scope::Admin => 2,
            Scope::Edge => 4,
            Scope::Node => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Admin => "admin",
            Scope::Edge => "edge",
            Scope::Node => "node",
        }
    }
}

/// A set of [`Scope`]s.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope (an unauthenticated development cluster).
    pub const ALL: Scopes = Scopes(0b1111);

    /// Just `s`.
    pub fn only(s: Scope) -> Self {
        Self(s.bit())
    }

    /// Whether `s` is in the set.
    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    fn with(self, s: Scope) -> Self {
        Self(self.0 | s.bit())
    }

    fn union(self, o: Scopes) -> Self {
        Self(self.0 | o.0)
    }

    fn intersects(self, o: Scopes) -> bool {
        self.0 & o.0 != 0
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .iter()
            .filter(|s| self.contains(**s))
            .map(|s| s.name())
            .collect();
        write!(f, "{}", names.join("+"))
    }
}

/// One configured API key and what it may do.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    secret: String,
    scopes: Scopes,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "ApiKey({:?})", self.scopes)
    }
}

/// An API key spec that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    /// Nothing after the scopes.
    #[error("empty key")]
    Empty,
    /// A scope name that does not exist.
    #[error("unknown scope `{0}` (known: publish, admin, edge, node)")]
    UnknownScope(String),
    /// A key with characters gRPC metadata cannot carry.
    #[error("the key must be printable ASCII without spaces")]
    NotPrintable,
}

impl FromStr for ApiKey {
    type Err = KeySpecError;

    /// `<key>` (publish scope: the least power, so an old key file never
    /// grants more than publishing) or `<scope>[+<scope>...]:<key>`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let spec = spec.trim();
        let (scopes, secret) = match spec.split_once(':') {
            None => (Scopes::only(Scope::Publish), spec),
            Some((names, secret)) => {
                let mut scopes = Scopes::default();
                for name in names.split('+') {
                    let s = Scope::ALL
                        .into_iter()
                        .find(|s| s.name() == name.trim())
                        .ok_or_else(|| KeySpecError::UnknownScope(name.to_string()))?;
                    scopes = scopes.with(s);
                }
                (scopes, secret)
            }
        };
        if secret.is_empty() {
            return Err(KeySpecError::Empty);
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeySpecError::NotPrintable);
        }
        Ok(Self {
            secret: secret.to_string(),
            scopes,
        })
    }
}

impl ApiKey {
    /// The secret sent in `authorization: apikey <secret>`.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// What the key may do.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }
}

/// Which roles each RPC accepts (any one of them). `None`: not a Herald
/// path (health and reflection are served unauthenticated, apart from
/// this).
pub fn required(path: &str) -> Option<Scopes> {
    let rest = path.strip_prefix("/herald.v1.")?;
    let (service, method) = rest.split_once('/')?;
    let node = Scopes::only(Scope::Node);
    Some(match (service, method) {
        ("Raft", _) => node,
        ("EdgeLink", _) => node.with(Scope::Edge),
        ("Admin", _) => node.with(Scope::Admin),
        // Presence between nodes: what one node's edges hold, and presence
        // events relayed to the nodes with interest.
        ("Publisher", "PresenceLocal" | "PresenceEvents") => node,
        ("Publisher", "ClusterStatus") => node
            .with(Scope::Publish)
            .with(Scope::Admin)
            .with(Scope::Edge),
        // Edges read history and presence, and publish for clients of
        // namespaces that allow it (the edge checks that first).
        ("Publisher", _) => node.with(Scope::Publish).with(Scope::Edge),
        _ => node,
    })
}

/// The credentials a node accepts; cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    keys: Arc<Vec<ApiKey>>,
    allow_unauthenticated: bool,
}

impl Credentials {
    /// Accept these keys (and verified certificates); with
    /// `allow_unauthenticated` every caller holds every role.
    pub fn new(keys: Vec<ApiKey>, allow_unauthenticated: bool) -> Self {
        Self {
            keys: Arc::new(keys),
            allow_unauthenticated,
        }
    }

    /// The roles a caller proves with its `authorization` header and the
    /// identity of its verified client certificate.
    fn scopes_of(
        &self,
        header: Option<&str>,
        identity: Option<Identity>,
    ) -> Result<Scopes, Rejection> {
        if self.allow_unauthenticated {
            return Ok(Scopes::ALL);
        }
        let from_cert = match identity {
            Some(Identity::Node(_)) => Scopes::only(Scope::Node),
            Some(Identity::Edge) => Scopes::only(Scope::Edge),
            None => Scopes::default(),
        };
        let Some(value) = header else {
            return if identity.is_some() {
                Ok(from_cert)
            } else {
                Err(Rejection::ApiKeyMissing)
            };
        };
        let Some(given) = value.strip_prefix("apikey ").map(str::trim) else {
            return Err(Rejection::ApiKeyMissing);
        };
        // Compare against every key in full so timing does not reveal a
        // prefix or which key matched.
        let mut scopes = Scopes::default();
        let mut found = false;
        for k in self.keys.iter() {
            let eq = constant_time_eq(k.secret.as_bytes(), given.as_bytes());
            found |= eq;
            if eq {
                scopes = scopes.union(k.scopes);
            }
        }
        if found {
            Ok(scopes.union(from_cert))
        } else {
            Err(Rejection::ApiKeyInvalid)
        }
    }

    /// Whether a call to `path` with these credentials may go on.
    pub fn authorize(
        &self,
        path: &str,
        header: Option<&str>,
        identity: Option<Identity>,
    ) -> Result<(), Rejection> {
        let Some(needed) = required(path) else {
            return Ok(());
        };
        let held = self.scopes_of(header, identity)?;
        if held.intersects(needed) {
            Ok(())
        } else {
            Err(Rejection::PermissionDenied {
                needed: format!("{needed:?}"),
            })
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Herald identity in a verified peer certificate chain (its leaf).
pub fn peer_identity<B>(req: &http::Request<B>) -> Option<Identity> {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    crate::identity::of_certificate(certs.first()?.as_ref())
}

/// A gRPC service behind the role check.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    credentials: Credentials,
}

impl<S> Guarded<S> {
    /// Check every call to `inner` against `credentials`.
    pub fn new(inner: S, credentials: Credentials) -> Self {
        Self { inner, credentials }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Guarded<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let identity = peer_identity(&req);
        match self
            .credentials
            .authorize(req.uri().path(), header, identity)
        {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(r) => {
                metrics::counter!("herald_grpc_auth_failures_total", "reason" => r.reason())
                    .increment(1);
                tracing::debug!(path = req.uri().path(), ?identity, "refused: {r}");
                Either::Right(ready(Ok(tonic::Status::from(r).into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(specs: &[&str]) -> Credentials {
        Credentials::new(specs.iter().map(|s| s.parse().unwrap()).collect(), false)
    }

    const RAFT: &str = "/herald.v1.Raft/Vote";
    const PUBLISH: &str = "/herald.v1.Publisher/Publish";
    const ADMIN: &str = "/herald.v1.Admin/RemoveNode";
    const LINK: &str = "/herald.v1.EdgeLink/Link";
    const PRESENCE_LOCAL: &str = "/herald.v1.Publisher/PresenceLocal";

    #[test]
    fn key_specs() {
        let k: ApiKey = "s3cret".parse().unwrap();
        assert_eq!(k.scopes(), Scopes::only(Scope::Publish));
        let k: ApiKey = "admin+publish:s3cret".parse().unwrap();
        assert!(k.scopes().contains(Scope::Admin) && k.scopes().contains(Scope::Publish));
        assert_eq!(k.secret(), "s3cret");
        assert_eq!(
            "root:x".parse::<ApiKey>(),
            Err(KeySpecError::UnknownScope("root".into()))
        );
        assert_eq!("admin:".parse::<ApiKey>(), Err(KeySpecError::Empty));
        assert_eq!("a b".parse::<ApiKey>(), Err(KeySpecError::NotPrintable));
        assert!(!format!("{k:?}").contains("s3cret"));
    }

    #[test]
    fn a_publish_key_reaches_only_the_public_api() {
        let c = creds(&["pub", "admin:adm"]);
        let key = Some("apikey pub");
        assert!(c.authorize(PUBLISH, key, None).is_ok());
        assert!(
            c.authorize("/herald.v1.Publisher/ClusterStatus", key, None)
                .is_ok()
        );
        for path in [RAFT, ADMIN, LINK, PRESENCE_LOCAL, "/herald.v1.Raft/Submit"] {
            assert!(
                matches!(
                    c.authorize(path, key, None),
                    Err(Rejection::PermissionDenied { .. })
                ),
                "{path}"
            );
        }
        let admin = Some("apikey adm");
        assert!(c.authorize(ADMIN, admin, None).is_ok());
        assert!(c.authorize(PUBLISH, admin, None).is_err());
        assert!(c.authorize(RAFT, admin, None).is_err());
    }

    #[test]
    fn certificates_carry_node_and_edge_roles() {
        let c = creds(&["pub"]);
        let node = Some(Identity::Node(2));
        for path in [RAFT, ADMIN, LINK, PRESENCE_LOCAL, PUBLISH] {
            assert!(c.authorize(path, None, node).is_ok(), "{path}");
        }
        let edge = Some(Identity::Edge);
        assert!(c.authorize(LINK, None, edge).is_ok());
        assert!(c.authorize(PUBLISH, None, edge).is_ok());
        for path in [
            RAFT,
            ADMIN,
            PRESENCE_LOCAL,
            "/herald.v1.Publisher/PresenceEvents",
        ] {
            assert!(c.authorize(path, None, edge).is_err(), "{path}");
        }
        // A wrong key is refused even with a good certificate.
        assert!(matches!(
            c.authorize(RAFT, Some("apikey nope"), node),
            Err(Rejection::ApiKeyInvalid)
        ));
    }

    #[test]
    fn no_or_bad_credentials() {
        let c = creds(&["a1", "b2"]);
        for path in [RAFT, PUBLISH, ADMIN] {
            assert!(matches!(
                c.authorize(path, None, None),
                Err(Rejection::ApiKeyMissing)
            ));
            assert!(matches!(
                c.authorize(path, Some("Bearer a1"), None),
                Err(Rejection::ApiKeyMissing)
            ));
            assert!(matches!(
                c.authorize(path, Some("apikey c3"), None),
                Err(Rejection::ApiKeyInvalid)
            ));
        }
        assert!(c.authorize(PUBLISH, Some("apikey b2"), None).is_ok());
        assert!(
            c.authorize("/grpc.health.v1.Health/Check", None, None)
                .is_ok()
        );
        let open = Credentials::new(vec![], true);
        assert!(open.authorize(RAFT, None, None).is_ok());
    }

    #[test]
    fn plaintext_node_and_edge_keys() {
        let c = creds(&["node:n", "edge:e"]);
        assert!(c.authorize(RAFT, Some("apikey n"), None).is_ok());
        assert!(c.authorize(LINK, Some("apikey e"), None).is_ok());
        assert!(c.authorize(RAFT, Some("apikey e"), None).is_err());
    }
}
