//! The delivery plane between nodes: QUIC with mutual TLS. The leader pushes
//! each committed publication to exactly the nodes that registered interest
//! in its channel ([`fanout`]), on long-lived unidirectional streams chosen
//! by channel, so per-channel order holds and one slow channel does not
//! stall the others; every node feeds what it receives to its edge links,
//! which drop duplicates by offset and fill gaps from history.
//!
//! Wire format of a stream: the sender's node id (u64, big-endian), then
//! frames of a u32 big-endian length and a protobuf `Publication`.
//!
//! A connection is bound to the node its certificate names
//! (`herald://node/<id>`): a dialer accepts only the node it meant to reach,
//! and a stream claiming another sender id than the certificate's is closed,
//! so one node's key cannot speak for another.

pub mod fanout;
pub mod interest;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_proto::v1::Publication;
use prost::Message;
use tokio::sync::{broadcast, mpsc};

use self::tls::{PeerTls, SERVER_NAME};

/// Streams per peer; a channel always uses the same one.
const STREAMS: usize = 8;
/// Frames queued per stream before new ones are dropped (the receiver then
/// fills the gap from history).
const STREAM_QUEUE: usize = 4096;
/// Largest frame accepted from a peer.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Most queued frames written to a stream in one call.
const WRITE_BATCH: usize = 256;
/// Most bytes taken from a stream in one read.
const READ_CHUNK: usize = 64 * 1024;

/// This node's QUIC endpoint and its links to peers.
pub struct PeerPlane {
    id: u64,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    links: Mutex<HashMap<u64, Arc<PeerLink>>>,
    delivery: broadcast::Sender<Arc<Vec<Publication>>>,
    bind_node_ids: bool,
}

impl PeerPlane {
    /// Bind the endpoint; received publications go to `delivery`.
    pub fn bind(
        id: u64,
        addr: SocketAddr,
        tls: PeerTls,
        delivery: broadcast::Sender<Arc<Vec<Publication>>>,
    ) -> std::io::Result<Arc<Self>> {
        let mut endpoint = quinn::Endpoint::server(tls.server, addr)?;
        endpoint.set_default_client_config(tls.client.clone());
        let plane = Arc::new(Self {
            id,
            endpoint,
            client: tls.client,
            links: Mutex::new(HashMap::new()),
            delivery,
            bind_node_ids: tls.bind_node_ids,
        });
        tokio::spawn(accept(plane.clone()));
        Ok(plane)
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Queue one encoded frame for a peer; never waits.
    pub fn send(&self, node: u64, addr: &str, channel: &str, frame: Bytes) {
        let link = {
            let mut links = self.links.lock().expect("links lock poisoned");
            let stale = links.get(&node).is_some_and(|l| l.addr != addr);
            if stale {
                links.remove(&node);
            }
            links
                .entry(node)
                .or_insert_with(|| {
                    PeerLink::start(
                        self.id,
                        node,
                        self.bind_node_ids,
                        addr.to_string(),
                        self.endpoint.clone(),
                        self.client.clone(),
                    )
                })
                .clone()
        };
        link.send(channel, frame);
    }

    /// Close every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

/// Encode a publication as one frame.
pub fn frame(p: &Publication) -> Bytes {
    let len = p.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    p.encode(&mut buf).expect("a Vec grows as needed");
    Bytes::from(buf)
}

/// Why a peer's stream was stopped: what it sent is not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("oversized frame: {0} bytes")]
    Oversized(usize),
    /// The bytes after the length are not a `Publication`.
    #[error("undecodable frame")]
    Undecodable,
}

impl FrameError {
    /// The QUIC stop code the stream is stopped with.
    pub fn code(&self) -> u32 {
        match self {
            FrameError::Oversized(_) => 1,
            FrameError::Undecodable => 2,
        }
    }
}

/// Take the next complete frame off the front of `buf`: `None` until all
/// of it has arrived. Pure, so every byte a peer can send is tested
/// without a socket.
pub fn next_frame(buf: &mut bytes::BytesMut) -> Result<Option<Publication>, FrameError> {
    let Some(len) = buf.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
        return Ok(None);
    };
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::Oversized(n));
    }
    if buf.len() < 4 + n {
        return Ok(None);
    }
    let frame = buf.split_to(4 + n);
    Publication::decode(&frame[4..])
        .map(Some)
        .map_err(|_| FrameError::Undecodable)
}

fn stream_of(channel: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % STREAMS as u64) as usize
}

/// The sending side towards one peer: one connection, [`STREAMS`] streams,
/// each fed by its own bounded queue and task.
struct PeerLink {
    node: u64,
    addr: String,
    queues: Vec<mpsc::Sender<Bytes>>,
}

impl PeerLink {
    fn start(
        me: u64,
        node: u64,
        bind: bool,
        addr: String,
        endpoint: quinn::Endpoint,
        client: quinn::ClientConfig,
    ) -> Arc<Self> {
        let conn: Arc<tokio::sync::Mutex<Option<quinn::Connection>>> = Arc::default();
        let mut queues = Vec::with_capacity(STREAMS);
        for _ in 0..STREAMS {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            queues.push(tx);
            tokio::spawn(write_stream(
                Ends { me, node, bind },
                addr.clone(),
                endpoint.clone(),
                client.clone(),
                conn.clone(),
                rx,
            ));
        }
        tokio::spawn(watch_path(node, conn));
        Arc::new(Self { node, addr, queues })
    }

    fn send(&self, channel: &str, frame: Bytes) {
        let peer = self.node.to_string();
        let len = frame.len() as u64;
        match self.queues[stream_of(channel)].try_send(frame) {
            Ok(()) => {
                metrics::counter!("herald_peer_sent_publications_total", "peer" => peer.clone())
                    .increment(1);
                metrics::counter!("herald_peer_sent_bytes_total", "peer" => peer).increment(len);
            }
            Err(_) => metrics::counter!("herald_peer_dropped_total", "peer" => peer).increment(1),
        }
    }
}

async fn connect(
    node: u64,
    bind: bool,
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    addr: &str,
    shared: &tokio::sync::Mutex<Option<quinn::Connection>>,
) -> Option<quinn::Connection> {
    let mut guard = shared.lock().await;
    if let Some(c) = guard.as_ref().filter(|c| c.close_reason().is_none()) {
        return Some(c.clone());
    }
    let target = tokio::net::lookup_host(addr).await.ok()?.next()?;
    let connecting = endpoint
        .connect_with(client.clone(), target, SERVER_NAME)
        .ok()?;
    match tokio::time::timeout(Duration::from_secs(3), connecting).await {
        Ok(Ok(c)) => {
            let named = peer_node(&c);
            if bind && named != Some(node) {
                metrics::counter!("herald_peer_refused_total").increment(1);
                tracing::warn!(
                    addr,
                    node,
                    ?named,
                    "peer certificate names another node; closing"
                );
                c.close(3u32.into(), b"wrong node identity");
                return None;
            }
            *guard = Some(c.clone());
            Some(c)
        }
        Ok(Err(e)) => {
            tracing::debug!(addr, "peer connect: {e}");
            None
        }
        Err(_) => None,
    }
}

/// The two ends of a link: this node, the peer, and whether the peer's
/// certificate must name it.
#[derive(Clone, Copy)]
struct Ends {
    me: u64,
    node: u64,
    bind: bool,
}

async fn write_stream(
    Ends { me, node, bind }: Ends,
    addr: String,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conn: Arc<tokio::sync::Mutex<Option<quinn::Connection>>>,
    mut rx: mpsc::Receiver<Bytes>,
) {
    // The frames that failed to write are retried once on the new stream.
    let mut pending: Vec<Bytes> = Vec::new();
    loop {
        let Some(c) = connect(node, bind, &endpoint, &client, &addr, &conn).await else {
            // Unreachable: drop what queued meanwhile (receivers fill from
            // history) rather than grow, and try again shortly.
            pending.clear();
            while rx.try_recv().is_ok() {
                metrics::counter!("herald_peer_dropped_total", "peer" => node.to_string())
                    .increment(1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if rx.is_closed() {
                return;
            }
            continue;
        };
        let Ok(mut stream) = c.open_uni().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if stream.write_all(&me.to_be_bytes()).await.is_err() {
            continue;
        }
        loop {
            let mut batch = std::mem::take(&mut pending);
            if batch.is_empty() {
                match rx.recv().await {
                    Some(f) => batch.push(f),
                    None => return,
                }
            }
            // Whatever else queued meanwhile goes out in the same write:
            // under load, one wake-up and one call per batch, not per frame.
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            let mut chunks = batch.clone();
            if stream.write_all_chunks(&mut chunks).await.is_err() {
                pending = batch;
                break;
            }
        }
    }
}

/// Publish the path's RTT and congestion window while connected.
async fn watch_path(node: u64, conn: Arc<tokio::sync::Mutex<Option<quinn::Connection>>>) {
    let peer = node.to_string();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if Arc::strong_count(&conn) == 1 {
            return;
        }
        let current = conn.lock().await.clone();
        if let Some(c) = current.filter(|c| c.close_reason().is_none()) {
            let stats = c.stats();
            metrics::gauge!("herald_peer_rtt_seconds", "peer" => peer.clone())
                .set(stats.path.rtt.as_secs_f64());
            metrics::gauge!("herald_peer_cwnd_bytes", "peer" => peer.clone())
                .set(stats.path.cwnd as f64);
        }
    }
}

async fn accept(plane: Arc<PeerPlane>) {
    while let Some(incoming) = plane.endpoint.accept().await {
        let delivery = plane.delivery.clone();
        let bind = plane.bind_node_ids;
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => match peer_node(&conn) {
                    Some(id) => serve_connection(Some(id), conn, delivery).await,
                    // A shared node certificate (`--tls-shared-node-cert`):
                    // any id the streams claim.
                    None if !bind => serve_connection(None, conn, delivery).await,
                    None => {
                        metrics::counter!("herald_peer_refused_total").increment(1);
                        tracing::warn!(%remote, "refused a peer whose certificate names no node");
                        conn.close(3u32.into(), b"no node identity");
                    }
                },
                Err(e) => {
                    metrics::counter!("herald_peer_refused_total").increment(1);
                    tracing::warn!(%remote, "refused a peer: {e}");
                }
            }
        });
    }
}

/// The node id a connection's verified peer certificate names.
fn peer_node(conn: &quinn::Connection) -> Option<u64> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    match crate::identity::of_certificate(certs.first()?)? {
        herald_proto::identity::Identity::Node(id) => Some(id),
        herald_proto::identity::Identity::Edge => None,
    }
}

async fn serve_connection(
    certified: Option<u64>,
    conn: quinn::Connection,
    delivery: broadcast::Sender<Arc<Vec<Publication>>>,
) {
    while let Ok(stream) = conn.accept_uni().await {
        tokio::spawn(read_stream(certified, stream, delivery.clone()));
    }
}

async fn read_stream(
    certified: Option<u64>,
    mut stream: quinn::RecvStream,
    delivery: broadcast::Sender<Arc<Vec<Publication>>>,
) {
    let mut id = [0u8; 8];
    if stream.read_exact(&mut id).await.is_err() {
        return;
    }
    let claimed = u64::from_be_bytes(id);
    if certified.is_some_and(|c| c != claimed) {
        metrics::counter!("herald_peer_refused_total").increment(1);
        tracing::warn!(
            claimed,
            certified,
            "a peer claimed another node's id; closing the stream"
        );
        let _ = stream.stop(3u32.into());
        return;
    }
    let peer = claimed.to_string();
    let mut buf = bytes::BytesMut::new();
    // Every frame complete in what has arrived is handed over as one batch,
    // so a burst wakes the edge links once, as an applied batch does.
    while let Ok(Some(chunk)) = stream.read_chunk(READ_CHUNK, true).await {
        buf.extend_from_slice(&chunk.bytes);
        let mut batch = Vec::new();
        loop {
            let before = buf.len();
            let p = match next_frame(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer, %e, "bad frame from peer; closing the stream");
                    let _ = stream.stop(e.code().into());
                    return;
                }
            };
            metrics::counter!("herald_peer_received_publications_total", "peer" => peer.clone())
                .increment(1);
            metrics::counter!("herald_peer_received_bytes_total", "peer" => peer.clone())
                .increment((before - buf.len()) as u64);
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            metrics::histogram!("herald_peer_commit_to_receive_seconds")
                .record((now_ms - p.published_at_ms).max(0) as f64 / 1000.0);
            batch.push(p);
        }
        if !batch.is_empty() {
            let _ = delivery.send(Arc::new(batch));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    /// A CA and, for each URI, a node certificate, loaded as [`PeerTls`].
    struct Pki {
        dir: tempfile::TempDir,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            let cert = ca.self_signed(&key).unwrap();
            std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
            Self {
                dir,
                issuer: Issuer::new(ca, key),
            }
        }

        fn tls(&self, node: u64) -> PeerTls {
            let mut p = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
            p.subject_alt_names.push(SanType::URI(
                herald_proto::identity::node_uri(node).try_into().unwrap(),
            ));
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            let d = self.dir.path();
            let (c, k) = (
                d.join(format!("n{node}.pem")),
                d.join(format!("n{node}-key.pem")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            PeerTls::load(&d.join("ca.pem"), &c, &k).unwrap()
        }
    }

    fn plane(
        id: u64,
        tls: PeerTls,
    ) -> (Arc<PeerPlane>, broadcast::Receiver<Arc<Vec<Publication>>>) {
        let (tx, rx) = broadcast::channel(16);
        let plane = PeerPlane::bind(id, "127.0.0.1:0".parse().unwrap(), tls, tx).unwrap();
        (plane, rx)
    }

    fn publication(i: u64) -> Bytes {
        frame(&Publication {
            channel: "bound".into(),
            offset: i,
            ..Default::default()
        })
    }

    async fn received(rx: &mut broadcast::Receiver<Arc<Vec<Publication>>>) -> bool {
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_connection_is_bound_to_the_certified_node_id() {
        let pki = Pki::new();
        let (sender, _) = plane(1, pki.tls(1));
        let (node2, mut rx2) = plane(2, pki.tls(2));
        let addr2 = node2.local_addr().unwrap().to_string();

        // The right node receives.
        sender.send(2, &addr2, "bound", publication(1));
        assert!(received(&mut rx2).await, "node 2 receives from node 1");

        // A peer certified as node 3, dialed as node 2, is refused.
        let (impostor, mut rx_impostor) = plane(2, pki.tls(3));
        let addr = impostor.local_addr().unwrap().to_string();
        let (sender2, _) = plane(1, pki.tls(1));
        sender2.send(2, &addr, "bound", publication(2));
        assert!(
            !received(&mut rx_impostor).await,
            "a peer certified as node 3 must not be taken for node 2"
        );

        // A sender certified as node 1 that claims to be node 5 is closed.
        let (liar, _) = plane(5, pki.tls(1));
        liar.send(2, &addr2, "bound", publication(3));
        assert!(
            !received(&mut rx2).await,
            "a stream claiming another id than its certificate's must be closed"
        );
    }
}

#[cfg(test)]
mod frame_tests {
    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::*;

    fn publication() -> impl Strategy<Value = Publication> {
        (
            "[a-z:]{1,20}",
            any::<u64>(),
            "[a-z0-9]{0,8}",
            proptest::collection::vec(any::<u8>(), 0..200),
            any::<i64>(),
        )
            .prop_map(
                |(channel, offset, epoch, data, published_at_ms)| Publication {
                    channel,
                    offset,
                    epoch,
                    data: data.into(),
                    published_at_ms,
                    ..Default::default()
                },
            )
    }

    proptest! {
        #[test]
        fn frames_arriving_in_any_chunks_decode_in_order(
            pubs in proptest::collection::vec(publication(), 0..6),
            cuts in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let stream: Vec<u8> = pubs.iter().flat_map(|p| frame(p).to_vec()).collect();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().copied().chain(std::iter::repeat(64)) {
                if at >= stream.len() {
                    break;
                }
                let end = (at + cut).min(stream.len());
                buf.extend_from_slice(&stream[at..end]);
                at = end;
                while let Some(p) = next_frame(&mut buf).unwrap() {
                    got.push(p);
                }
            }
            prop_assert_eq!(got, pubs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn random_bytes_are_a_frame_an_error_or_a_wait_never_a_panic(
            input in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(_)) = next_frame(&mut buf) {}
        }

        #[test]
        fn mutated_frames_never_panic_and_fail_only_as_documented(
            p in publication(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = frame(&p).to_vec();
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] ^= b;
            }
            let mut buf = BytesMut::from(&bytes[..]);
            match next_frame(&mut buf) {
                Ok(_) => {}
                Err(FrameError::Oversized(n)) => prop_assert!(n > MAX_FRAME),
                Err(FrameError::Undecodable) => {}
            }
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_waiting_for_it() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert_eq!(
            next_frame(&mut buf),
            Err(FrameError::Oversized(u32::MAX as usize))
        );
    }
}
