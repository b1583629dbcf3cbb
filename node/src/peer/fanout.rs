//! The leader's side of the delivery plane: every publication it applies
//! goes, encoded once, to each node that registered interest in the channel.
//! Followers run the same task and stay idle until they lead.

use std::sync::Arc;

use herald_proto::v1::Publication;
use tokio::sync::broadcast;

use super::{PeerPlane, frame};
use crate::replica::Replica;

/// Run until the applied stream closes.
pub async fn run(
    plane: Arc<PeerPlane>,
    replica: Arc<Replica>,
    mut applied: broadcast::Receiver<Arc<Vec<Publication>>>,
) {
    loop {
        let batch = match applied.recv().await {
            Ok(b) => b,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Receivers notice the gap at the next publication and fill it.
                metrics::counter!("herald_peer_fanout_lagged_total").increment(n);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !replica.is_leader() {
            continue;
        }
        let sends: Vec<(u64, String, usize)> = replica.with_delivery(|d| {
            let mut out = Vec::new();
            for (i, p) in batch.iter().enumerate() {
                for node in d.members(&p.channel).filter(|n| *n != replica.id) {
                    if let Some(addr) = d.quic_addr(node) {
                        out.push((node, addr.to_string(), i));
                    }
                }
            }
            out
        });
        let mut frames: Vec<Option<bytes::Bytes>> = vec![None; batch.len()];
        for (node, addr, i) in sends {
            let p = &batch[i];
            let f = frames[i].get_or_insert_with(|| frame(p)).clone();
            plane.send(node, &addr, &p.channel, f);
        }
    }
}
