//! Channel policy: channel-name rules, per-namespace settings (history size
//! and TTL, client publish, presence, JSON Schemas per event type) and the
//! size limits every publish is checked against before it reaches Raft.
//!
//! Validation here is pure and total: any input yields `Ok` or a
//! [`Rejection`] with a stable reason, never a panic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::rejection::Rejection;

/// The name of the namespace channels without a `:` belong to.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest header name of a publication, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 128;
/// Longest header value of a publication, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 1024;
/// Longest `content_type` of a publication, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 128;

/// Size limits, the `[limits]` table of the policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest channel name in bytes.
    pub max_channel_len: usize,
    /// Largest `data` of one publication in bytes.
    pub max_payload_bytes: usize,
    /// Most publications in one `PublishBatch`.
    pub max_batch: usize,
    /// Most entries in one `headers` map.
    pub max_headers: usize,
    /// Longest idempotency key in bytes.
    pub max_idempotency_key_len: usize,
    /// How long an idempotency key is remembered, in seconds.
    pub idempotency_window_secs: u64,
    /// Most publications one `History` call returns.
    pub max_history_limit: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_channel_len: 255,
            max_payload_bytes: 64 * 1024,
            max_batch: 1000,
            max_headers: 32,
            max_idempotency_key_len: 128,
            idempotency_window_secs: 120,
            max_history_limit: 1000,
        }
    }
}

/// One `[namespaces.<name>]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Publications kept per channel; 0 makes the namespace ephemeral.
    pub history_size: u32,
    /// How long a publication stays in history, in seconds (0 = forever).
    pub history_ttl_secs: u64,
    /// Whether WebSocket/SSE clients may publish (server API always may).
    pub allow_client_publish: bool,
    /// Whether presence is tracked for this namespace's channels.
    pub presence: bool,
    /// JSON Schema per event type, written as TOML tables.
    pub schemas: BTreeMap<String, serde_json::Value>,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl_secs: 600,
            allow_client_publish: false,
            presence: false,
            schemas: BTreeMap::new(),
        }
    }
}

/// A namespace with its compiled schemas.
#[derive(Debug)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: NamespaceConfig,
    validators: BTreeMap<String, jsonschema::Validator>,
}

impl Namespace {
    /// History time-to-live, `None` for unbounded.
    pub fn history_ttl(&self) -> Option<Duration> {
        (self.config.history_ttl_secs > 0)
            .then(|| Duration::from_secs(self.config.history_ttl_secs))
    }

    /// Check a JSON payload against the schema of its event type, if any.
    pub fn check_payload(
        &self,
        event_type: &str,
        content_type: &str,
        data: &[u8],
    ) -> Result<(), Rejection> {
        let Some(validator) = self.validators.get(event_type) else {
            return Ok(());
        };
        if !is_json(content_type) {
            return Err(Rejection::SchemaViolation {
                path: String::new(),
                message: format!(
                    "event type `{event_type}` has a schema, so its content type must be JSON"
                ),
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| Rejection::SchemaViolation {
                path: String::new(),
                message: format!("payload is not valid JSON: {e}"),
            })?;
        match validator.iter_errors(&value).next() {
            None => Ok(()),
            Some(err) => Err(Rejection::SchemaViolation {
                path: err.instance_path().to_string(),
                message: err.to_string(),
            }),
        }
    }
}

/// Whether a content type is JSON (`application/json`, `*+json`, or none).
pub fn is_json(content_type: &str) -> bool {
    content_type.is_empty()
        || content_type.starts_with("application/json")
        || content_type.ends_with("+json")
}

/// Every namespace plus the limits: the cluster's channel policy.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Size limits.
    pub limits: Limits,
    by_name: Arc<BTreeMap<String, Namespace>>,
}

impl Namespaces {
    /// Compile the policy; adds a default namespace with default settings
    /// when the file does not configure one.
    pub fn new(
        limits: Limits,
        mut configs: BTreeMap<String, NamespaceConfig>,
    ) -> Result<Self, ConfigError> {
        configs.entry(DEFAULT_NAMESPACE.to_string()).or_default();
        if limits.max_channel_len == 0 || limits.max_channel_len > 1024 {
            return Err(ConfigError::policy(
                "limits.max_channel_len",
                "must be between 1 and 1024",
            ));
        }
        if limits.max_payload_bytes == 0 || limits.max_payload_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::policy(
                "limits.max_payload_bytes",
                "must be between 1 and 16 MiB",
            ));
        }
        if limits.max_batch == 0 {
            return Err(ConfigError::policy(
                "limits.max_batch",
                "must be greater than 0",
            ));
        }
        if limits.max_history_limit == 0 {
            return Err(ConfigError::policy(
                "limits.max_history_limit",
                "must be greater than 0",
            ));
        }
        let mut by_name = BTreeMap::new();
        for (name, config) in configs {
            if !valid_name_chars(&name) || name.contains(':') || name.is_empty() {
                return Err(ConfigError::policy(
                    format!("namespaces.{name}"),
                    "invalid namespace name",
                ));
            }
            if config.history_size > 1_000_000 {
                return Err(ConfigError::policy(
                    format!("namespaces.{name}.history_size"),
                    "must be at most 1000000",
                ));
            }
            let mut validators = BTreeMap::new();
            for (event_type, schema) in &config.schemas {
                let v = jsonschema::validator_for(schema).map_err(|e| {
                    ConfigError::policy(
                        format!("namespaces.{name}.schemas.{event_type}"),
                        e.to_string(),
                    )
                })?;
                validators.insert(event_type.clone(), v);
            }
            by_name.insert(
                name.clone(),
                Namespace {
                    name,
                    config,
                    validators,
                },
            );
        }
        Ok(Self {
            limits,
            by_name: Arc::new(by_name),
        })
    }

    /// History TTL in ms of every namespace that has one: what a sweep
    /// reclaims by.
    pub fn ttls_ms(&self) -> BTreeMap<String, u64> {
        self.by_name
            .iter()
            .filter(|(_, ns)| ns.config.history_ttl_secs > 0)
            .map(|(name, ns)| {
                (
                    name.clone(),
                    ns.config.history_ttl_secs.saturating_mul(1000),
                )
            })
            .collect()
    }

    /// The namespace a channel belongs to, after checking the channel name.
    pub fn resolve(&self, channel: &str) -> Result<&Namespace, Rejection> {
        check_channel_name(channel, self.limits.max_channel_len)?;
        let ns = match channel.split_once(':') {
            Some((ns, _)) => ns,
            None => DEFAULT_NAMESPACE,
        };
        self.by_name
            .get(ns)
            .ok_or_else(|| Rejection::UnknownNamespace {
                namespace: ns.to_string(),
            })
    }

    /// Check everything about one publish that does not need Raft state.
    pub fn check_publish(
        &self,
        channel: &str,
        event_type: &str,
        content_type: &str,
        data: &[u8],
        idempotency_key: &str,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Result<&Namespace, Rejection> {
        let ns = self.resolve(channel)?;
        if data.len() > self.limits.max_payload_bytes {
            return Err(Rejection::PayloadTooLarge {
                size: data.len(),
                max: self.limits.max_payload_bytes,
            });
        }
        if idempotency_key.len() > self.limits.max_idempotency_key_len {
            return Err(Rejection::IdempotencyKeyTooLong {
                max: self.limits.max_idempotency_key_len,
            });
        }
        if headers.len() > self.limits.max_headers {
            return Err(Rejection::TooManyHeaders {
                max: self.limits.max_headers,
            });
        }
        // Every publication is stored in every voter's log and delivered
        // with each push: no field of it is unbounded.
        if let Some((name, _)) = headers
            .iter()
            .find(|(k, v)| k.len() > MAX_HEADER_NAME_BYTES || v.len() > MAX_HEADER_VALUE_BYTES)
        {
            let cut = (0..=MAX_HEADER_NAME_BYTES.min(name.len()))
                .rev()
                .find(|&i| name.is_char_boundary(i))
                .unwrap_or(0);
            return Err(Rejection::HeaderTooLong {
                name: name[..cut].to_string(),
                max_name: MAX_HEADER_NAME_BYTES,
                max_value: MAX_HEADER_VALUE_BYTES,
            });
        }
        if content_type.len() > MAX_CONTENT_TYPE_BYTES {
            return Err(Rejection::ContentTypeTooLong {
                max: MAX_CONTENT_TYPE_BYTES,
            });
        }
        if event_type.len() > 128 {
            return Err(Rejection::EventTypeTooLong { max: 128 });
        }
        ns.check_payload(event_type, content_type, data)?;
        Ok(ns)
    }

    /// Names of every configured namespace.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

fn valid_name_chars(s: &str) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=' | b'#' | b'$'
            )
    })
}

/// Channel names: 1..=max bytes of `[A-Za-z0-9_-.:@/=#$]`, at most one `:`
/// separating a non-empty namespace from a non-empty name.
pub fn check_channel_name(channel: &str, max_len: usize) -> Result<(), Rejection> {
    if channel.is_empty() {
        return Err(Rejection::ChannelEmpty);
    }
    if channel.len() > max_len {
        return Err(Rejection::ChannelTooLong {
            len: channel.len(),
            max: max_len,
        });
    }
    if !valid_name_chars(channel) {
        return Err(Rejection::ChannelInvalid {
            reason: "allowed characters are A-Z a-z 0-9 _ - . : @ / = # $",
        });
    }
    if let Some((ns, name)) = channel.split_once(':')
        && (ns.is_empty() || name.is_empty() || name.contains(':'))
    {
        return Err(Rejection::ChannelInvalid {
            reason: "a channel is `name` or `namespace:name`, with one colon and both parts non-empty",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Namespaces {
        let toml = r#"
            [chat]
            history_size = 10
            [chat.schemas.message]
            type = "object"
            required = ["text"]
            properties.text = { type = "string", maxLength = 5 }
        "#;
        let configs: BTreeMap<String, NamespaceConfig> = toml::from_str(toml).unwrap();
        Namespaces::new(Limits::default(), configs).unwrap()
    }

    #[test]
    fn channel_names() {
        assert!(matches!(
            check_channel_name("", 10),
            Err(Rejection::ChannelEmpty)
        ));
        assert!(matches!(
            check_channel_name("abcdefghijk", 10),
            Err(Rejection::ChannelTooLong { .. })
        ));
        assert!(matches!(
            check_channel_name("a b", 10),
            Err(Rejection::ChannelInvalid { .. })
        ));
        assert!(matches!(
            check_channel_name(":x", 10),
            Err(Rejection::ChannelInvalid { .. })
        ));
        assert!(matches!(
            check_channel_name("a:b:c", 10),
            Err(Rejection::ChannelInvalid { .. })
        ));
        assert!(check_channel_name("chat:r-7", 10).is_ok());
    }

    #[test]
    fn header_and_content_type_sizes_are_bounded() {
        let p = policy();
        let check = |ct: &str, headers: &[(&str, String)]| {
            let headers: BTreeMap<String, String> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            p.check_publish("room", "", ct, b"{}", "", &headers)
                .map(|_| ())
        };
        let fits = "v".repeat(MAX_HEADER_VALUE_BYTES);
        assert!(check("application/json", &[("k", fits.clone())]).is_ok());
        let long_value = check("application/json", &[("k", format!("{fits}v"))]);
        assert!(
            matches!(long_value, Err(Rejection::HeaderTooLong { ref name, .. }) if name == "k"),
            "{long_value:?}"
        );
        let long_name = "é".repeat(MAX_HEADER_NAME_BYTES);
        let e = check("application/json", &[(&long_name, String::new())]).unwrap_err();
        assert_eq!(e.reason(), "HEADER_TOO_LONG");
        let ct = format!("application/{}+json", "x".repeat(MAX_CONTENT_TYPE_BYTES));
        let e = check(&ct, &[]).unwrap_err();
        assert_eq!(e.reason(), "CONTENT_TYPE_TOO_LONG");
    }

    #[test]
    fn namespaces_resolve() {
        let p = policy();
        assert_eq!(p.resolve("room").unwrap().name, "default");
        assert_eq!(p.resolve("chat:room").unwrap().name, "chat");
        assert!(matches!(
            p.resolve("nope:room"),
            Err(Rejection::UnknownNamespace { .. })
        ));
    }

    #[test]
    fn schema_names_failing_path() {
        let p = policy();
        let ns = p.resolve("chat:a").unwrap();
        assert!(
            ns.check_payload("message", "application/json", br#"{"text":"hi"}"#)
                .is_ok()
        );
        assert!(
            ns.check_payload("other", "application/json", b"not json")
                .is_ok()
        );
        match ns.check_payload("message", "application/json", br#"{"text":"too long"}"#) {
            Err(Rejection::SchemaViolation { path, .. }) => assert_eq!(path, "/text"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ns.check_payload("message", "application/json", b"{"),
            Err(Rejection::SchemaViolation { .. })
        ));
    }
}
