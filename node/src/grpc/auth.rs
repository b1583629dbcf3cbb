//! API-key authentication of gRPC callers: `authorization: apikey <key>`,
//! checked against every configured key (several at once, for rotation).

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::rejection::Rejection;

/// The accepted keys; `None` accepts unauthenticated calls.
#[derive(Clone)]
pub struct ApiKeys(Option<Arc<Vec<String>>>);

impl ApiKeys {
    /// Accept these keys, or anything when `allow_unauthenticated`.
    pub fn new(keys: Vec<String>, allow_unauthenticated: bool) -> Self {
        if allow_unauthenticated {
            Self(None)
        } else {
            Self(Some(Arc::new(keys)))
        }
    }

    fn check(&self, header: Option<&str>) -> Result<(), Rejection> {
        let Some(keys) = &self.0 else { return Ok(()) };
        let Some(value) = header else {
            return Err(Rejection::ApiKeyMissing);
        };
        let Some(given) = value.strip_prefix("apikey ").map(str::trim) else {
            return Err(Rejection::ApiKeyMissing);
        };
        // Compare every key in full so timing does not reveal a prefix.
        let mut ok = false;
        for k in keys.iter() {
            ok |= constant_time_eq(k.as_bytes(), given.as_bytes());
        }
        if ok {
            Ok(())
        } else {
            Err(Rejection::ApiKeyInvalid)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for ApiKeys {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.check(header) {
            Ok(()) => Ok(req),
            Err(r) => {
                metrics::counter!("herald_grpc_auth_failures_total", "reason" => r.reason())
                    .increment(1);
                Err(r.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k = ApiKeys::new(vec!["a1".into(), "b2".into()], false);
        assert!(k.check(Some("apikey a1")).is_ok());
        assert!(k.check(Some("apikey b2")).is_ok());
        assert!(matches!(
            k.check(Some("apikey c3")),
            Err(Rejection::ApiKeyInvalid)
        ));
        assert!(matches!(
            k.check(Some("Bearer a1")),
            Err(Rejection::ApiKeyMissing)
        ));
        assert!(matches!(k.check(None), Err(Rejection::ApiKeyMissing)));
        assert!(ApiKeys::new(vec![], true).check(None).is_ok());
    }
}
