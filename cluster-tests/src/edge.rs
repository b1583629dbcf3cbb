//! `herald-edge` processes for multi-process scenarios: an edge linked to
//! chosen nodes of a [`Cluster`], on loopback or (in an isolated cluster) in
//! its own network namespace, with the same faults as a node (kill -9,
//! SIGTERM, pause, restart on the same ports).
//!
//! Clients authenticate with [`edge_token`], an HS256 token signed with
//! [`EDGE_JWT_SECRET`] that every harness edge accepts.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::client::http_get;
use crate::process::{NodeLaunch, NodeProc};
use crate::{Cluster, binary};

/// The HS256 secret harness edges verify client tokens with.
pub const EDGE_JWT_SECRET: &str = "herald-harness-edge-secret-32-bytes-or-more";

/// A token for `user` allowing subscribe, publish, history and presence on
/// every channel, valid for a day.
pub fn edge_token(user: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 86_400;
    let claims = serde_json::json!({
        "sub": user,
        "exp": exp,
        "caps": [{"channels": ["*"], "match": "wildcard", "allow": ["sub", "pub", "hst", "prs"]}],
    });
    let key = jsonwebtoken::EncodingKey::from_secret(EDGE_JWT_SECRET.as_bytes())
        .expect("an HMAC key of any length is valid");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .expect("HS256 signing cannot fail")
}

/// A `herald-edge` process with fixed identity: restarts keep its ports,
/// its node list and its flags. Dropping it kills the process.
#[derive(Debug)]
pub struct EdgeProc {
    process: NodeProc,
    listen: SocketAddr,
}

impl EdgeProc {
    /// Start edge `id` linked to `nodes` of `cluster` (tried in that order)
    /// with `extra` flags, and wait (hang guard 60 s) until its EdgeLink is
    /// up. In an isolated cluster the edge runs as network host `id`, which
    /// must differ from every node id.
    pub async fn start(
        cluster: &mut Cluster,
        id: u64,
        nodes: &[u64],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let edge = Self::spawn(cluster, id, nodes, extra)?;
        edge.wait_linked(Duration::from_secs(60)).await?;
        Ok(edge)
    }

    /// [`EdgeProc::start`] without waiting for the link.
    pub fn spawn(
        cluster: &mut Cluster,
        id: u64,
        nodes: &[u64],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        if nodes.is_empty() {
            bail!("an edge needs at least one node");
        }
        let node_addrs: Vec<String> = nodes
            .iter()
            .map(|n| cluster.node(*n).grpc_addr().to_string())
            .collect();
        let api_key = cluster.options().api_key.clone();
        let (program, mut args, [listen, http]) =
            cluster.place_process(id, binary::herald_edge())?;
        let dir = cluster.dir().join(format!("edge-{id}"));
        std::fs::create_dir_all(&dir)?;
        let flags: [(&str, String); 6] = [
            ("--listen", listen.to_string()),
            ("--http-listen", http.to_string()),
            ("--nodes", node_addrs.join(",")),
            ("--api-key", api_key),
            ("--jwt-hs256-secret", EDGE_JWT_SECRET.to_string()),
            (
                "--log",
                std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        for (flag, value) in flags {
            args.extend([OsString::from(flag), value.into()]);
        }
        args.extend(extra.iter().map(OsString::from));
        let process = NodeProc::launch(
            id,
            NodeLaunch {
                program,
                args,
                env: Vec::new(),
                grpc_addr: listen,
                http_addr: http,
                data_dir: dir,
                log_path: cluster.dir().join(format!("edge-{id}.log")),
            },
        )
        .with_context(|| format!("spawning edge {id}"))?;
        Ok(Self { process, listen })
    }

    /// The edge's id (its network host id in an isolated cluster).
    pub fn id(&self) -> u64 {
        self.process.id()
    }

    /// The WebSocket URL clients connect to.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.listen)
    }

    /// The SSE URL (append `?channel=...`).
    pub fn sse_url(&self) -> String {
        format!("http://{}/connection/sse", self.listen)
    }

    /// The client listener's address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The operations listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn http_addr(&self) -> SocketAddr {
        self.process.http_addr()
    }

    /// The node (`host:port`) the edge's EdgeLink is on, from `/readyz`;
    /// `None` while it has no live link (or is down).
    pub async fn linked_node(&self) -> Option<String> {
        match http_get(self.http_addr(), "/readyz").await {
            Ok((200, body)) => {
                let node = body.trim().strip_prefix("ready linked ")?;
                node.strip_prefix("http://")
                    .or_else(|| node.strip_prefix("https://"))
                    .map(str::to_string)
            }
            _ => None,
        }
    }

    /// `/readyz`'s status and body (`Err` while the edge does not answer).
    pub async fn readyz(&self) -> std::io::Result<(u16, String)> {
        http_get(self.http_addr(), "/readyz").await
    }

    /// Wait (hang guard `within`) until the edge has a live EdgeLink.
    pub async fn wait_linked(&self, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(node) = self.linked_node().await {
                return Ok(node);
            }
            if Instant::now() >= deadline {
                bail!(
                    "edge {} not linked within {within:?}:\n{}",
                    self.id(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process handle, for faults: kill, terminate, pause, resume,
    /// restart on the same ports.
    pub fn process(&mut self) -> &mut NodeProc {
        &mut self.process
    }

    /// A metric's value summed over its label sets, from `/metrics`; 0 when
    /// absent.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (status, body) = http_get(self.http_addr(), "/metrics").await?;
        if status != 200 {
            bail!("edge {} /metrics answered {status}", self.id());
        }
        Ok(sum_metric(&body, name))
    }

    /// The last `lines` lines of the edge's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// The sum of every sample of metric `name` in a Prometheus text body.
pub fn sum_metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_label_set_of_one_metric_only() {
        let body =
            "# HELP x\nherald_x{a=\"1\"} 2\nherald_x{a=\"2\"} 3\nherald_x_total 7\nherald_x 1\n";
        assert_eq!(sum_metric(body, "herald_x"), 6.0);
        assert_eq!(sum_metric(body, "herald_x_total"), 7.0);
        assert_eq!(sum_metric(body, "herald_y"), 0.0);
    }

    #[test]
    fn tokens_carry_the_user_and_every_capability() {
        let token = edge_token("alice");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(EDGE_JWT_SECRET.as_bytes()).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["caps"][0]["channels"][0], "*");
    }
}
