//! Subscribers and publishers of any of the three systems behind one
//! shape, so every scenario drives Herald, Centrifugo and NATS with the same
//! code: Herald and Centrifugo speak the Centrifugo client protocol
//! ([`crate::wsclient`]), NATS its own text protocol over WebSocket
//! ([`super::nats`]). A channel name is used as-is as a NATS subject.

use std::net::IpAddr;
use std::sync::Arc;

use herald_proto::v1::PublishRequest;
use tokio::sync::watch;

use super::http_api::HttpApi;
use super::nats::{NatsTcp, NatsWs, js_ok};
use super::systems::{Deployment, PublishTarget, System};
use crate::leader::{Leader, Route};
use crate::publish::{reason, retryable};
use crate::wsclient::{Conn, Dialer, Ended};

/// How to open subscribers on one deployment: clients are spread over its
/// client-facing servers in turn.
#[derive(Debug, Clone)]
pub(crate) struct Subscribers {
    nats: bool,
    dialers: Arc<Vec<Dialer>>,
    token: Arc<str>,
}

/// One open subscriber.
#[derive(Debug)]
pub(crate) enum Subscriber {
    Centrifugo(Conn),
    Nats(NatsWs),
}

impl Subscribers {
    pub(crate) async fn new(d: &Deployment, sources: &[IpAddr]) -> anyhow::Result<Self> {
        let mut dialers = Vec::new();
        for url in &d.ws_urls {
            dialers.push(Dialer::new(url, sources.to_vec()).await?);
        }
        Ok(Self::from_parts(
            d.system == System::Nats,
            dialers,
            &d.token,
        ))
    }

    pub(crate) fn from_parts(nats: bool, dialers: Vec<Dialer>, token: &str) -> Self {
        Self {
            nats,
            dialers: Arc::new(dialers),
            token: token.into(),
        }
    }

    fn dialer(&self, index: usize) -> &Dialer {
        &self.dialers[index % self.dialers.len()]
    }

    /// Client number `index`, subscribed to `channel`.
    pub(crate) async fn open(&self, index: usize, channel: &str) -> Result<Subscriber, String> {
        let dialer = self.dialer(index);
        if self.nats {
            return NatsWs::open(dialer, index / self.dialers.len(), channel)
                .await
                .map(Subscriber::Nats);
        }
        dialer
            .open(index / self.dialers.len(), &self.token, channel)
            .await
            .map(Subscriber::Centrifugo)
    }

    /// Client number `index`, connected but not subscribed (Centrifugo
    /// protocol only: the recovery scenario subscribes itself).
    pub(crate) async fn connect(&self, index: usize) -> Result<Conn, String> {
        self.dialer(index)
            .connect(index / self.dialers.len(), &self.token)
            .await
    }

    /// A NATS WebSocket client number `index` subscribed to `subject`.
    pub(crate) async fn nats(&self, index: usize, subject: &str) -> Result<NatsWs, String> {
        NatsWs::open(self.dialer(index), index / self.dialers.len(), subject).await
    }
}

impl Subscriber {
    /// Stay subscribed until `stop`, giving each publication's text to
    /// `on_line` (a whole push line, or a NATS payload).
    pub(crate) async fn run(self, stop: watch::Receiver<bool>, on_line: impl FnMut(&str)) -> Ended {
        match self {
            Subscriber::Centrifugo(c) => c.run(stop, on_line).await,
            Subscriber::Nats(n) => n.run(stop, on_line).await,
        }
    }
}

/// One publishing connection (or, for Herald, a handle on the shared gRPC
/// connection to the leader).
#[derive(Debug)]
pub(crate) enum Lane {
    Herald(Leader, Route),
    Centrifugo(HttpApi),
    Nats(NatsTcp, bool),
}

impl Lane {
    pub(crate) async fn open(target: &PublishTarget) -> anyhow::Result<Self> {
        Ok(match target {
            PublishTarget::Herald(leader) => {
                let mut leader = leader.clone();
                let route = leader.route();
                Lane::Herald(leader, route)
            }
            PublishTarget::Centrifugo(addr) => {
                Lane::Centrifugo(HttpApi::connect(*addr, super::systems::API_KEY).await?)
            }
            PublishTarget::Nats { addr, jetstream } => {
                Lane::Nats(NatsTcp::connect(*addr).await?, *jetstream)
            }
        })
    }

    /// Publish JSON `data` to `channel` and wait for the system's answer:
    /// the gRPC ack (Raft commit), the HTTP API's answer, the JetStream ack;
    /// core NATS only writes to the socket. The error is a short reason.
    pub(crate) async fn publish(&mut self, channel: &str, data: &[u8]) -> Result<(), String> {
        match self {
            Lane::Herald(leader, route) => {
                leader.refresh(route);
                let request = PublishRequest {
                    channel: channel.to_string(),
                    event_type: "bench".to_string(),
                    data: data.to_vec().into(),
                    content_type: "application/json".to_string(),
                    ..PublishRequest::default()
                };
                match route.client.publish(request).await {
                    Ok(_) => Ok(()),
                    Err(status) => {
                        if retryable(&status) {
                            leader.report_stale(route.generation);
                        }
                        Err(reason(&status))
                    }
                }
            }
            Lane::Centrifugo(api) => api.publish(channel, data).await,
            Lane::Nats(conn, false) => conn.publish(channel, data).await,
            Lane::Nats(conn, true) => js_ok(&conn.request(channel, data).await?).map(|_| ()),
        }
    }
}
