//! Multi-process tests of `herald-node`: one module per scenario, each
//! naming the guarantee of `docs/guarantees.md` it proves. Every test starts its own
//! cluster of real processes (see the `herald_cluster_tests` harness), and
//! clusters run one at a time within this binary.
//!
//! | module | proves |
//! |---|---|
//! | `leader_crash` | 1 and 5: SIGKILL of the leader under load loses no ack, stores no retry twice |
//! | `leader_pause` | 1 and 5: a frozen (SIGSTOP) leader is replaced and steps down on waking |
//! | `edge_restart` | 2 and 3 from WebSocket subscribers: an edge killed and restarted, then the node another edge is linked to killed, under load; every subscriber ends with every publication once, in order |
//! | `full_restart` | 1 and 3's premise: history, offsets and epochs survive restarting every node |
//! | `membership` | 1: joining (via snapshot) and removing nodes under load loses nothing |
//! | `validation` | 5 and 6: idempotent retries, schema and limit errors with stable reasons, auth, forwarding, batches, `History` windows |
//! | `sweep` | 3 across reclaimed state: channels past their namespace's TTL forgotten on every node, in snapshots and after a restart; no reader recovers across the reset |
//! | `health` | Operations: liveness independent of quorum, readiness dependent on it |
//! | `roles` | Security: internal RPCs refused to publish keys and anonymous callers; a foreign-CA node cannot join; the checker's planted-flaw companion (`docs/security.md`) |
//!
//! `ledger` (what was sent and acknowledged, and the history check) and
//! `load` (careful concurrent publishers) come from the harness library, shared
//! with the fault suite (`tests/faults`).

mod edge_restart;
mod full_restart;
mod health;
mod leader_crash;
mod leader_pause;
mod membership;
mod roles;
mod sweep;
mod validation;

use herald_cluster_tests::{ledger, load};
