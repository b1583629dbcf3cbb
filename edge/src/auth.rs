//! Client authentication: verifying connection and subscription JWTs
//! (HS256 secret, RS256/ES256 PEM public key, or a JWKS file) and turning
//! their claims into [`Capabilities`] — which channel patterns a connection
//! may subscribe to, publish to, and read history or presence of.
//!
//! This module only decides; it never talks to a client. Each failure is an
//! [`AuthError`] variant that the protocol layer maps to its documented code
//! (docs/protocol.md, "Client protocol (edge)").

use std::collections::HashSet;
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use serde::Deserialize;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token anywhere (command, query, cookie, header).
    #[error("token required")]
    Missing,
    /// Not a JWT, or its claims have the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signature does not verify with any configured key, or its algorithm
    /// or key id is not configured.
    #[error("token signature invalid: {0}")]
    BadSignature(String),
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `aud`, `iss` or `nbf` did not match.
    #[error("token not valid here: {0}")]
    Rejected(String),
    /// A key file could not be used (configuration).
    #[error("{0}")]
    KeyFile(String),
}

impl AuthError {
    /// Stable label for the `herald_edge_auth_failures_total{reason}` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::Rejected(_) => "rejected",
            AuthError::KeyFile(_) => "key_file",
        }
    }
}

/// What a capability allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe (and recover).
    Subscribe,
    /// Publish from the client.
    Publish,
    /// Read history.
    History,
    /// Read presence and presence stats.
    Presence,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Subscribe => 1,
            Action::Publish => 2,
            Action::History => 4,
            Action::Presence => 8,
        }
    }

    fn parse(s: &str) -> Option<u8> {
        Some(match s {
            "sub" => 1,
            "pub" => 2,
            "hst" => 4,
            "prs" => 8,
            "all" | "*" => 15,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Wildcard(String),
}

impl Pattern {
    fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == channel,
            Pattern::Wildcard(p) => glob(p.as_bytes(), channel.as_bytes()),
        }
    }
}

/// `*` matches any run of bytes, `?` exactly one; everything else itself.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[derive(Debug, Clone)]
struct Rule {
    patterns: Vec<Pattern>,
    allow: u8,
}

/// Which channels a connection may act on, from its token's `caps` claim
/// (or the anonymous policy).
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    rules: Vec<Rule>,
    /// Channels granted one by one (subscription tokens), subscribe only.
    granted: HashSet<String>,
}

impl Capabilities {
    /// Everything on channels matching these wildcard patterns.
    pub fn wildcard(patterns: &[String], actions: &[Action]) -> Self {
        Self {
            rules: vec![Rule {
                patterns: patterns
                    .iter()
                    .map(|p| Pattern::Wildcard(p.clone()))
                    .collect(),
                allow: actions.iter().fold(0, |a, x| a | x.bit()),
            }],
            granted: HashSet::new(),
        }
    }

    /// Whether `action` on `channel` is allowed.
    pub fn allows(&self, action: Action, channel: &str) -> bool {
        if action == Action::Subscribe && self.granted.contains(channel) {
            return true;
        }
        self.rules
            .iter()
            .any(|r| r.allow & action.bit() != 0 && r.patterns.iter().any(|p| p.matches(channel)))
    }

    /// Allow subscribing to one channel (a verified subscription token).
    pub fn grant_subscribe(&mut self, channel: &str) {
        self.granted.insert(channel.to_string());
    }
}

/// One entry of the `caps` claim (Centrifugo's channel capability object).
#[derive(Debug, Deserialize)]
struct CapClaim {
    channels: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default, rename = "match")]
    match_: String,
}

#[derive(Debug, Deserialize)]
struct ConnectionClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    caps: Vec<CapClaim>,
    /// Only subscription tokens carry it: its presence marks a token that
    /// must never open a connection.
    #[serde(default)]
    channel: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct SubscriptionClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<i64>,
    channel: String,
}

/// A verified connection token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `sub`: the user id ("" for anonymous).
    pub user: String,
    /// `exp` as Unix seconds.
    pub expires_at: Option<i64>,
    /// What the token allows.
    pub caps: Capabilities,
}

/// A verified subscription token.
#[derive(Debug, Clone)]
pub struct SubscriptionGrant {
    /// `sub`, which must equal the connection's user.
    pub user: String,
    /// The one channel the token is for.
    pub channel: String,
    /// `exp` as Unix seconds.
    pub expires_at: Option<i64>,
}

/// Shortest HS256 secret accepted: a shorter one can be brute-forced from
/// any token the edge accepted (RFC 7518 §3.2 asks for at least the hash
/// size, 256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Verifies tokens against the configured keys.
#[derive(Clone, Default)]
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    jwks: Vec<(Option<String>, Algorithm, DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
    require_exp: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ec", &self.ec.is_some())
            .field("jwks", &self.jwks.len())
            .finish()
    }
}

impl Verifier {
    /// Load keys. Errors name the flag whose key is at fault. With
    /// `require_exp`, tokens without an `exp` claim are refused.
    pub fn from_sources(
        hs256_secret: Option<&str>,
        public_key_file: Option<&Path>,
        jwks_file: Option<&Path>,
        audience: Option<String>,
        issuer: Option<String>,
        require_exp: bool,
    ) -> Result<Self, (&'static str, AuthError)> {
        let mut v = Verifier {
            audience,
            issuer,
            require_exp,
            ..Default::default()
        };
        if let Some(secret) = hs256_secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err((
                    "jwt-hs256-secret",
                    AuthError::KeyFile(format!(
                        "the secret has {} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES} \
                         bytes (e.g. `openssl rand -hex 32`)",
                        secret.len()
                    )),
                ));
            }
            v.hmac = Some(
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| ("jwt-hs256-secret", AuthError::KeyFile(e.to_string())))?,
            );
        }
        if let Some(path) = public_key_file {
            let field = "jwt-public-key-file";
            let pem = std::fs::read(path).map_err(|e| {
                (
                    field,
                    AuthError::KeyFile(format!("reading {}: {e}", path.display())),
                )
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                v.rsa = Some(k);
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                v.ec = Some(k);
            } else {
                return Err((
                    field,
                    AuthError::KeyFile(format!(
                        "{} is neither an RSA nor an EC public key in PEM",
                        path.display()
                    )),
                ));
            }
        }
        if let Some(path) = jwks_file {
            let field = "jwks-file";
            let text = std::fs::read_to_string(path).map_err(|e| {
                (
                    field,
                    AuthError::KeyFile(format!("reading {}: {e}", path.display())),
                )
            })?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| (field, AuthError::KeyFile(format!("not a JWKS: {e}"))))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| (field, AuthError::KeyFile(format!("unusable key: {e}"))))?;
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => {
                        return Err((
                            field,
                            AuthError::KeyFile("only RSA and EC keys are supported".into()),
                        ));
                    }
                };
                v.jwks.push((jwk.common.key_id.clone(), alg, key));
            }
            if v.jwks.is_empty() {
                return Err((field, AuthError::KeyFile("no keys in the set".into())));
            }
        }
        Ok(v)
    }

    /// No key configured at all.
    pub fn is_empty(&self) -> bool {
        self.hmac.is_none() && self.rsa.is_none() && self.ec.is_none() && self.jwks.is_empty()
    }

    fn verify<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hmac.as_ref(),
            Algorithm::RS256 | Algorithm::ES256 => {
                let local = if header.alg == Algorithm::RS256 {
                    self.rsa.as_ref()
                } else {
                    self.ec.as_ref()
                };
                local.or_else(|| {
                    self.jwks
                        .iter()
                        .find(|(kid, alg, _)| {
                            *alg == header.alg
                                && (header.kid.is_none() || kid.as_deref() == header.kid.as_deref())
                        })
                        .map(|(_, _, k)| k)
                })
            }
            other => {
                return Err(AuthError::BadSignature(format!(
                    "algorithm {other:?} not accepted"
                )));
            }
        }
        .ok_or_else(|| {
            AuthError::BadSignature(format!("no key configured for {:?}", header.alg))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims = HashSet::new();
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        if self.require_exp {
            validation.required_spec_claims.insert("exp".into());
        }
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.validate_aud = true;
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        decode::<T>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature | ErrorKind::InvalidKeyFormat => {
                    AuthError::BadSignature(e.to_string())
                }
                ErrorKind::InvalidAudience
                | ErrorKind::InvalidIssuer
                | ErrorKind::ImmatureSignature
                | ErrorKind::MissingRequiredClaim(_) => AuthError::Rejected(e.to_string()),
                _ => AuthError::Malformed(e.to_string()),
            })
    }

    /// Verify a connection token.
    pub fn connection(&self, token: &str) -> Result<Identity, AuthError> {
        let claims: ConnectionClaims = self.verify(token)?;
        if claims.channel.is_some() {
            return Err(AuthError::Malformed(
                "a subscription token (it has a `channel` claim) is not a connection token".into(),
            ));
        }
        let mut rules = Vec::with_capacity(claims.caps.len());
        for c in claims.caps {
            let mut allow = 0;
            for a in &c.allow {
                allow |= Action::parse(a).ok_or_else(|| {
                    AuthError::Malformed(format!("caps: unknown capability `{a}`"))
                })?;
            }
            let patterns = c
                .channels
                .into_iter()
                .map(|ch| match c.match_.as_str() {
                    "" | "exact" => Ok(Pattern::Exact(ch)),
                    "wildcard" => Ok(Pattern::Wildcard(ch)),
                    other => Err(AuthError::Malformed(format!(
                        "caps: match `{other}` not supported (exact, wildcard)"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule { patterns, allow });
        }
        Ok(Identity {
            user: claims.sub,
            expires_at: claims.exp,
            caps: Capabilities {
                rules,
                granted: HashSet::new(),
            },
        })
    }

    /// Verify a subscription token.
    pub fn subscription(&self, token: &str) -> Result<SubscriptionGrant, AuthError> {
        let claims: SubscriptionClaims = self.verify(token)?;
        Ok(SubscriptionGrant {
            user: claims.sub,
            channel: claims.channel,
            expires_at: claims.exp,
        })
    }
}

/// The token an HTTP upgrade request carries, in order of precedence:
/// `token` query parameter, the token cookie (`cookie_name`; `None` when
/// the request comes from a page whose cookies must not authenticate it),
/// `Authorization: Bearer`.
pub fn token_from_request(
    query_token: Option<&str>,
    headers: &axum::http::HeaderMap,
    cookie_name: Option<&str>,
) -> Option<String> {
    if let Some(t) = query_token.filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    if let Some(name) = cookie_name {
        for value in headers.get_all(axum::http::header::COOKIE) {
            let Ok(s) = value.to_str() else { continue };
            for pair in s.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=')
                    && k == name
                    && !v.is_empty()
                {
                    return Some(v.trim_matches('"').to_string());
                }
            }
        }
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    fn hs(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-s3cret";

    fn verifier() -> Verifier {
        Verifier::from_sources(Some(SECRET), None, None, None, None, true).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn glob_matches() {
        assert!(glob(b"*", b""));
        assert!(glob(b"chat:*", b"chat:room-1"));
        assert!(!glob(b"chat:*", b"news:room-1"));
        assert!(glob(b"a?c*z", b"abcxxz"));
        assert!(!glob(b"a?c", b"ac"));
    }

    #[test]
    fn caps_claim_is_enforced() {
        let t = hs(
            json!({"sub": "u1", "exp": now() + 60, "caps": [
                {"channels": ["chat:*"], "match": "wildcard", "allow": ["sub", "pub"]},
                {"channels": ["news"], "allow": ["sub", "hst"]}
            ]}),
            SECRET,
        );
        let id = verifier().connection(&t).unwrap();
        assert_eq!(id.user, "u1");
        assert!(id.caps.allows(Action::Subscribe, "chat:1"));
        assert!(id.caps.allows(Action::Publish, "chat:1"));
        assert!(!id.caps.allows(Action::History, "chat:1"));
        assert!(id.caps.allows(Action::History, "news"));
        assert!(!id.caps.allows(Action::Subscribe, "news2"));
    }

    #[test]
    fn failures_are_told_apart() {
        let v = verifier();
        assert!(matches!(v.connection(""), Err(AuthError::Missing)));
        assert!(matches!(v.connection("abc"), Err(AuthError::Malformed(_))));
        let wrong = hs(json!({"sub": "u"}), "other");
        assert!(matches!(
            v.connection(&wrong),
            Err(AuthError::BadSignature(_))
        ));
        let old = hs(json!({"sub": "u", "exp": now() - 10}), SECRET);
        assert!(matches!(v.connection(&old), Err(AuthError::Expired)));
        let bad_caps = hs(
            json!({"sub": "u", "exp": now() + 60, "caps": [{"channels": ["x"], "allow": ["fly"]}]}),
            SECRET,
        );
        assert!(matches!(
            v.connection(&bad_caps),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn tokens_without_exp_are_refused_unless_allowed() {
        let t = hs(json!({"sub": "u"}), SECRET);
        assert!(matches!(
            verifier().connection(&t),
            Err(AuthError::Rejected(_))
        ));
        let sub = hs(json!({"sub": "u", "channel": "c"}), SECRET);
        assert!(matches!(
            verifier().subscription(&sub),
            Err(AuthError::Rejected(_))
        ));
        let lax = Verifier::from_sources(Some(SECRET), None, None, None, None, false).unwrap();
        assert_eq!(lax.connection(&t).unwrap().expires_at, None);
        assert!(lax.subscription(&sub).is_ok());
    }

    #[test]
    fn a_subscription_token_never_opens_a_connection() {
        let t = hs(
            json!({"sub": "u", "exp": now() + 60, "channel": "chat:1"}),
            SECRET,
        );
        assert!(verifier().subscription(&t).is_ok());
        assert!(matches!(
            verifier().connection(&t),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        for s in ["", "x", &"k".repeat(MIN_HS256_SECRET_BYTES - 1)] {
            let (field, e) =
                Verifier::from_sources(Some(s), None, None, None, None, true).unwrap_err();
            assert_eq!(field, "jwt-hs256-secret");
            assert!(e.to_string().contains("at least 32 bytes"), "{e}");
        }
        let ok = "k".repeat(MIN_HS256_SECRET_BYTES);
        assert!(Verifier::from_sources(Some(&ok), None, None, None, None, true).is_ok());
    }

    #[test]
    fn token_sources() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("cookie", "a=b; herald_token=tok1".parse().unwrap());
        h.insert("authorization", "Bearer tok2".parse().unwrap());
        let cookie = Some("herald_token");
        assert_eq!(token_from_request(Some("q"), &h, cookie).unwrap(), "q");
        assert_eq!(token_from_request(None, &h, cookie).unwrap(), "tok1");
        // A request whose cookies must not count: the header token only.
        assert_eq!(token_from_request(None, &h, None).unwrap(), "tok2");
        h.remove("authorization");
        assert_eq!(token_from_request(None, &h, None), None);
        h.remove("cookie");
        h.insert("authorization", "Bearer tok2".parse().unwrap());
        assert_eq!(token_from_request(None, &h, cookie).unwrap(), "tok2");
    }

    proptest::proptest! {
        #[test]
        fn any_text_as_a_token_is_refused_as_documented(text in "\\PC{0,200}") {
            match verifier().connection(&text) {
                Ok(_) => proptest::prop_assert!(false, "accepted garbage"),
                Err(AuthError::Missing) => proptest::prop_assert!(text.trim().is_empty()),
                Err(AuthError::Malformed(_) | AuthError::BadSignature(_) | AuthError::Expired | AuthError::Rejected(_)) => {}
                Err(e) => proptest::prop_assert!(false, "unexpected error {e:?}"),
            }
        }

        #[test]
        fn a_mutated_token_is_refused_or_still_says_exactly_the_same(
            edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::char::any()), 1..5),
        ) {
            let t = hs(json!({"sub": "u1", "exp": now() + 600,
                "caps": [{"channels": ["chat:*"], "match": "wildcard", "allow": ["sub"]}]}), SECRET);
            let mut chars: Vec<char> = t.chars().collect();
            for (i, c) in edits {
                let i = i % chars.len();
                chars[i] = c;
            }
            let mutated: String = chars.into_iter().collect();
            match verifier().connection(&mutated) {
                // Base64 can spell the same bytes twice (unused low bits of
                // the last character): then the claims are the signed ones.
                Ok(id) => {
                    proptest::prop_assert_eq!(id.user, "u1");
                    proptest::prop_assert!(id.caps.allows(Action::Subscribe, "chat:x"));
                    proptest::prop_assert!(!id.caps.allows(Action::Publish, "chat:x"));
                }
                Err(AuthError::Malformed(_) | AuthError::BadSignature(_) | AuthError::Expired | AuthError::Rejected(_)) => {}
                Err(e) => proptest::prop_assert!(false, "unexpected error {e:?}"),
            }
        }
    }
}
