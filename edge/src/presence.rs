//! This edge's presence: which of its clients are subscribed to which
//! channel of a namespace with `presence = true`. Every change is sent up
//! the EdgeLink as a `PresenceUpdate`; after a reconnect the whole table is
//! sent again (the node keeps an edge's presence only while its link
//! lives). Channels whose namespace is known to have presence off are not
//! tracked; while the flag is unknown, changes are sent anyway and the node
//! ignores them if presence is off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use herald_proto::v1::{ClientInfo, PresenceUpdate};
use tokio::sync::mpsc;

use crate::channel::ChannelName;
use crate::hub::LinkCommand;
use crate::upstream::Upstream;

/// Channel → client id → info.
#[derive(Debug)]
pub struct Presence {
    channels: Mutex<HashMap<ChannelName, HashMap<String, ClientInfo>>>,
    link: mpsc::UnboundedSender<LinkCommand>,
    upstream: Arc<Upstream>,
    /// Namespaces whose flag is being asked for (one lookup at a time).
    asking: Arc<Mutex<HashSet<String>>>,
}

impl Presence {
    /// Presence sent up `link`; namespace flags asked of `upstream`.
    pub fn new(link: mpsc::UnboundedSender<LinkCommand>, upstream: Arc<Upstream>) -> Arc<Self> {
        Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            link,
            upstream,
            asking: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, HashMap<String, ClientInfo>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client subscribed.
    pub fn join(&self, channel: &ChannelName, client: &str, user: &str) {
        match self.upstream.cached_presence(channel) {
            Some(false) => return,
            Some(true) => {}
            None => {
                // Learn the flag for next time; this join is sent anyway.
                let namespace = channel.as_str().split_once(':').map_or("", |(ns, _)| ns);
                let first = self
                    .asking
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(namespace.to_string());
                if first {
                    let (upstream, asking) = (self.upstream.clone(), self.asking.clone());
                    let (channel, namespace) = (channel.clone(), namespace.to_string());
                    tokio::spawn(async move {
                        let _ = upstream.presence_enabled(&channel).await;
                        asking
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&namespace);
                    });
                }
            }
        }
        let info = ClientInfo {
            client: client.to_string(),
            user: user.to_string(),
            ..Default::default()
        };
        self.lock()
            .entry(channel.clone())
            .or_default()
            .insert(client.to_string(), info.clone());
        let _ = self.link.send(LinkCommand::Presence(PresenceUpdate {
            channel: channel.to_string(),
            joined: vec![info],
            left: vec![],
        }));
    }

    /// A client left (unsubscribed, was unsubscribed, or disconnected).
    pub fn leave(&self, channel: &ChannelName, client: &str) {
        let removed = {
            let mut channels = self.lock();
            let Some(clients) = channels.get_mut(channel) else {
                return;
            };
            let removed = clients.remove(client).is_some();
            if clients.is_empty() {
                channels.remove(channel);
            }
            removed
        };
        if removed {
            let _ = self.link.send(LinkCommand::Presence(PresenceUpdate {
                channel: channel.to_string(),
                joined: vec![],
                left: vec![client.to_string()],
            }));
        }
    }

    /// The whole table, one update per channel, for a new link.
    pub fn snapshot(&self) -> Vec<PresenceUpdate> {
        self.lock()
            .iter()
            .map(|(c, clients)| PresenceUpdate {
                channel: c.to_string(),
                joined: clients.values().cloned().collect(),
                left: vec![],
            })
            .collect()
    }
}
