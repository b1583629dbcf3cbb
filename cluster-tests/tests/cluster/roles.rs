//! Only the cluster can write the cluster (`docs/security.md`). On a
//! cluster started the way production runs it (`--grpc-tls`, one
//! certificate per node from the cluster CA, a publish key and an admin key
//! apart):
//!
//! * a publish key reaches `Publisher` and nothing internal: `Raft`,
//!   `Admin`, `EdgeLink` and the node-to-node presence calls answer
//!   `PERMISSION_DENIED`; without any credential they answer
//!   `API_KEY_MISSING`; an admin key reaches `Admin` and still not `Raft`;
//! * an edge proves its role with its `herald://edge` certificate and links;
//!   the same edge without it never links;
//! * a cleartext client gets no answer from a TLS node;
//! * a node whose certificate comes from another CA cannot join, not even
//!   as a learner (so it never receives a channel's history), while a node
//!   with the cluster CA's certificate joins the same way.

use std::path::Path;
use std::time::Duration;

use herald_cluster_tests::client::{ApiKey, channel, channel_tls, reason_of};
use herald_cluster_tests::{Cluster, ClusterOptions, EdgeProc, announce, binary};
use herald_proto::v1::admin_client::AdminClient;
use herald_proto::v1::edge_link_client::EdgeLinkClient;
use herald_proto::v1::publisher_client::PublisherClient;
use herald_proto::v1::raft_client::RaftClient;
use herald_proto::v1::{
    CampaignRequest, EdgeMessage, PresenceRequest, PublishRequest, RaftPayload, RemoveNodeRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

const PUBLISH_KEY: &str = "roles-publish-key";
const ADMIN_KEY: &str = "roles-admin-key";

/// A CA with node and edge certificates, written by `herald certs`.
fn certs(dir: &Path) {
    let out = std::process::Command::new(binary::herald_cli())
        .args(["certs", "--nodes", "8", "--out"])
        .arg(dir)
        .output()
        .expect("running herald certs");
    assert!(
        out.status.success(),
        "herald certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Node flags for gRPC over mutual TLS with the certificates in `dir`.
fn tls_args(dir: &Path) -> Vec<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        "--grpc-tls".into(),
        "--tls-ca".into(),
        p("ca.pem"),
        "--tls-cert".into(),
        p("node-{id}.pem"),
        "--tls-key".into(),
        p("node-{id}-key.pem"),
    ]
}

fn tls_options(dir: &Path) -> ClusterOptions {
    ClusterOptions {
        api_key: PUBLISH_KEY.into(),
        key_specs: vec![PUBLISH_KEY.into(), format!("admin:{ADMIN_KEY}")],
        tls_ca: Some(dir.join("ca.pem")),
        extra_args: tls_args(dir),
        ..ClusterOptions::default()
    }
}

/// The code and reason of an answer: `(OK, "answered")` when the call
/// went through.
fn refusal<T>(_what: &str, r: Result<T, Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, "answered".to_string()),
        Err(s) => (
            s.code(),
            reason_of(&s).unwrap_or_else(|| s.message().to_string()),
        ),
    }
}

/// The checker: every call of `answers` not refused with `code` and
/// `reason`, described.
fn leaks(answers: &[(&'static str, (Code, String))], code: Code, reason: &str) -> Vec<String> {
    answers
        .iter()
        .filter(|(_, (c, r))| (*c, r.as_str()) != (code, reason))
        .map(|(call, (c, r))| format!("{call}: {c:?} {r}"))
        .collect()
}

/// Every internal call with the credentials `channel` and `key` carry:
/// `(call, answer)`.
async fn internal_calls(
    channel: Channel,
    key: Option<&str>,
) -> Vec<(&'static str, (Code, String))> {
    let auth = ApiKey::new(key);
    let mut raft = RaftClient::with_interceptor(channel.clone(), auth.clone());
    let mut admin = AdminClient::with_interceptor(channel.clone(), auth.clone());
    let mut link = EdgeLinkClient::with_interceptor(channel.clone(), auth.clone());
    let mut publisher = PublisherClient::with_interceptor(channel, auth);
    // Undecodable on purpose: a call that got past the role check would be
    // answered INVALID_ARGUMENT by the Raft service, not refused.
    let junk = || RaftPayload {
        data: vec![0xff; 16].into(),
    };
    let (_hold, rx) = tokio::sync::mpsc::channel::<EdgeMessage>(1);
    vec![
        ("Raft.Vote", refusal("Raft.Vote", raft.vote(junk()).await)),
        (
            "Raft.AppendEntries",
            refusal("Raft.AppendEntries", raft.append_entries(junk()).await),
        ),
        (
            "Raft.InstallSnapshot",
            refusal("Raft.InstallSnapshot", raft.install_snapshot(junk()).await),
        ),
        (
            "Raft.Submit",
            refusal("Raft.Submit", raft.submit(junk()).await),
        ),
        (
            "Admin.RemoveNode",
            refusal(
                "Admin.RemoveNode",
                admin.remove_node(RemoveNodeRequest { id: 2 }).await,
            ),
        ),
        (
            "Admin.Campaign",
            refusal(
                "Admin.Campaign",
                admin.campaign(CampaignRequest::default()).await,
            ),
        ),
        (
            "EdgeLink.Link",
            refusal(
                "EdgeLink.Link",
                link.link(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map(|_| "an open link"),
            ),
        ),
        (
            "Publisher.PresenceLocal",
            refusal(
                "Publisher.PresenceLocal",
                publisher
                    .presence_local(PresenceRequest {
                        channel: "chat:x".into(),
                    })
                    .await,
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_rpcs_refuse_publish_keys_and_anonymous_callers() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let ca = tls.path().join("ca.pem");
    let mut cluster = Cluster::start(3, tls_options(tls.path())).await.unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    let addr = cluster.node(leader).grpc_addr();

    // The publish key publishes.
    let ack = cluster
        .publisher(leader)
        .publish(PublishRequest {
            channel: "roles".into(),
            data: b"{}".to_vec().into(),
            ..Default::default()
        })
        .await
        .expect("a publish key publishes");
    assert_eq!(ack.into_inner().offset, 1);

    let with_key = internal_calls(channel_tls(addr, Some(&ca)), Some(PUBLISH_KEY)).await;
    let leaked = leaks(&with_key, Code::PermissionDenied, "PERMISSION_DENIED");
    assert!(leaked.is_empty(), "with a publish key: {leaked:#?}");
    let anonymous = internal_calls(channel_tls(addr, Some(&ca)), None).await;
    let leaked = leaks(&anonymous, Code::Unauthenticated, "API_KEY_MISSING");
    assert!(leaked.is_empty(), "without credentials: {leaked:#?}");

    // The admin key reaches Admin (removing node 99, not a member, is a
    // no-op), and nothing node-only.
    let mut admin = cluster.admin_with_key(leader, Some(ADMIN_KEY));
    let removed = admin.remove_node(RemoveNodeRequest { id: 99 }).await;
    assert!(
        !matches!(&removed, Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated)),
        "the admin key must reach Admin: {removed:?}"
    );
    let mut raft =
        RaftClient::with_interceptor(channel_tls(addr, Some(&ca)), ApiKey::new(Some(ADMIN_KEY)));
    let (code, _) = refusal(
        "Raft.Vote with the admin key",
        raft.vote(RaftPayload::default()).await,
    );
    assert_eq!(code, Code::PermissionDenied);

    // Cleartext gets nowhere on a TLS port.
    let mut plain =
        PublisherClient::with_interceptor(channel(addr), ApiKey::new(Some(PUBLISH_KEY)));
    let (code, _) = refusal(
        "a cleartext publish",
        plain
            .publish(PublishRequest {
                channel: "roles".into(),
                data: b"{}".to_vec().into(),
                ..Default::default()
            })
            .await,
    );
    // (The TLS listener answers an HTTP/2 preface with a TLS alert: the
    // call fails in transport, whatever code the client library picks.)
    assert!(
        !matches!(
            code,
            Code::Ok | Code::PermissionDenied | Code::Unauthenticated
        ),
        "cleartext must not even reach the role check: {code:?}"
    );

    // An edge links with its certificate, and not with the publish key alone.
    let p = |f: &str| tls.path().join(f).display().to_string();
    let (ca_s, cert, key) = (p("ca.pem"), p("edge.pem"), p("edge-key.pem"));
    let ids = cluster.ids();
    let edge = EdgeProc::start(
        &mut cluster,
        20,
        &ids,
        &["--tls-ca", &ca_s, "--tls-cert", &cert, "--tls-key", &key],
    )
    .await
    .expect("an edge with its certificate links");
    drop(edge);
    let keyed = EdgeProc::spawn(&mut cluster, 21, &ids, &["--tls-ca", &ca_s]).unwrap();
    assert!(
        keyed.wait_linked(Duration::from_secs(5)).await.is_err(),
        "an edge holding only a publish key must not link"
    );
    announce(
        "verdict roles: publish key and anonymous callers refused on Raft, Admin, EdgeLink, PresenceLocal; admin key reaches Admin only; edge links by certificate only; cleartext refused",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_from_a_foreign_ca_cannot_join_even_as_a_learner() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let foreign = tempfile::tempdir().unwrap();
    certs(foreign.path());
    let mut cluster = Cluster::start(3, tls_options(tls.path())).await.unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    cluster
        .publisher(leader)
        .publish(PublishRequest {
            channel: "secret".into(),
            data: b"{\"history\":1}".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Node 4 holds a certificate naming it, from another CA, and the
    // cluster's publish key: it asks to join as a learner and keeps asking.
    let mut opts = cluster.options().clone();
    opts.extra_args = tls_args(foreign.path());
    cluster.add_node_with(4, true, &opts).unwrap();
    // Watch the leader's membership (not node 4's own view: it holds no
    // certificate the harness trusts) for 15 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let status = cluster.status(leader).await.unwrap();
        assert!(
            status.members.iter().all(|m| m.id != 4),
            "node 4 joined with a foreign CA: {:?}",
            status.members
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(cluster.node_mut(4).is_running(), "node 4 keeps trying");
    let log4 = std::fs::read_to_string(cluster.dir().join("node-4.log")).unwrap();
    assert!(
        log4.contains("certificate") || log4.contains("Certificate"),
        "node 4's log should show the TLS refusal:\n{log4}"
    );
    cluster.forget_node(4);

    // The same join with the cluster CA's certificate for node 5 works.
    let opts = cluster.options().clone();
    cluster.add_node_with(5, true, &opts).unwrap();
    cluster
        .wait_for_member(5, Some("learner"), Duration::from_secs(60))
        .await
        .expect("a node with the cluster CA's certificate joins");
    announce(
        "verdict roles_foreign_ca: foreign-CA node 4 never a member after 15 s; node 5 with the cluster CA joined as learner",
    );
}

/// The checker's companion: on a cluster where every caller holds every
/// role (`--allow-unauthenticated`, the flaw this file looks for, planted),
/// the same calls with a publish key are reported as leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_sees_internal_rpcs_open_to_a_publish_key() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let mut opts = tls_options(tls.path());
    opts.extra_args.push("--allow-unauthenticated".into());
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    let addr = cluster.node(leader).grpc_addr();
    let ca = tls.path().join("ca.pem");
    let answers = internal_calls(channel_tls(addr, Some(&ca)), Some(PUBLISH_KEY)).await;
    let leaked = leaks(&answers, Code::PermissionDenied, "PERMISSION_DENIED");
    for call in [
        "Raft.Vote",
        "Raft.AppendEntries",
        "Admin.Campaign",
        "EdgeLink.Link",
    ] {
        assert!(
            leaked.iter().any(|l| l.starts_with(call)),
            "the checker missed {call}: {leaked:#?}"
        );
    }
    announce(format!(
        "verdict roles_planted: the checker reports {} of {} internal calls open on an unauthenticated cluster",
        leaked.len(),
        answers.len()
    ));
}
