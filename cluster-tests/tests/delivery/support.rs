//! Shared pieces: certificates, QUIC-enabled clusters, edge-link clients,
//! metric reading.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use herald_cluster_tests::binary::herald_cli;
use herald_cluster_tests::client::{ApiKey, channel, http_get};
use herald_cluster_tests::cluster::ClusterOptions;
use herald_proto::v1::edge_link_client::EdgeLinkClient;
use herald_proto::v1::edge_message::Msg as EdgeMsg;
use herald_proto::v1::node_message::Msg as NodeMsg;
use herald_proto::v1::{
    EdgeMessage, LinkSubscribe, LinkSubscribed, NodeMessage, PresenceUpdate, Publication,
};
use tokio::sync::mpsc;
use tonic::Streaming;

/// Write a CA, node and edge certificates with `herald certs`.
pub(crate) fn certs(dir: &Path) {
    let out = std::process::Command::new(herald_cli())
        .args(["certs", "--out"])
        .arg(dir)
        .output()
        .expect("running herald certs");
    assert!(
        out.status.success(),
        "herald certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Flags enabling QUIC with the certificates in `dir`.
pub(crate) fn quic_args(dir: &Path) -> Vec<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        "--quic-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-ca".into(),
        p("ca.pem"),
        "--tls-cert".into(),
        // The harness puts each node's id for `{id}`.
        p("node-{id}.pem"),
        "--tls-key".into(),
        p("node-{id}-key.pem"),
        "--interest-linger-ms".into(),
        "200".into(),
    ]
}

/// Cluster options with QUIC enabled.
pub(crate) fn quic_options(certs_dir: &Path) -> ClusterOptions {
    ClusterOptions {
        extra_args: quic_args(certs_dir),
        ..ClusterOptions::default()
    }
}

/// One edge's link to a node, as an edge would hold it.
pub(crate) struct Link {
    tx: mpsc::Sender<EdgeMessage>,
    rx: Streaming<NodeMessage>,
}

impl Link {
    /// Open the stream.
    pub(crate) async fn open(addr: SocketAddr, key: &str) -> Link {
        let mut client = EdgeLinkClient::with_interceptor(channel(addr), ApiKey::new(Some(key)));
        let (tx, rx) = mpsc::channel(16);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let rx = client
            .link(stream)
            .await
            .expect("opening the edge link")
            .into_inner();
        Link { tx, rx }
    }

    /// Subscribe from the current position and return the answer.
    pub(crate) async fn subscribe(&mut self, channel: &str) -> LinkSubscribed {
        let msg = LinkSubscribe {
            channel: channel.into(),
            since: None,
            recover_limit: 0,
        };
        self.tx
            .send(EdgeMessage {
                msg: Some(EdgeMsg::Subscribe(msg)),
            })
            .await
            .unwrap();
        match self.next().await {
            NodeMsg::Subscribed(s) => s,
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    /// Report presence changes of this edge's clients.
    pub(crate) async fn presence(&mut self, update: PresenceUpdate) {
        self.tx
            .send(EdgeMessage {
                msg: Some(EdgeMsg::Presence(update)),
            })
            .await
            .unwrap();
    }

    /// The next message (hang guard 30 s).
    pub(crate) async fn next(&mut self) -> NodeMsg {
        let m = tokio::time::timeout(Duration::from_secs(30), self.rx.message())
            .await
            .expect("edge link silent for 30 s")
            .expect("edge link failed")
            .expect("edge link closed");
        m.msg.expect("empty node message")
    }

    /// Read `n` publications.
    pub(crate) async fn publications(&mut self, n: usize) -> Vec<Publication> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next().await {
                NodeMsg::Publication(p) => out.push(p),
                other => panic!("unexpected message while reading publications: {other:?}"),
            }
        }
        out
    }
}

/// Sum of a counter over all its label sets on a node's `/metrics`.
pub(crate) async fn counter(http: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(http, "/metrics").await.expect("scraping /metrics");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll until `f` holds (hang guard 30 s).
pub(crate) async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
