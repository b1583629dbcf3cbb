//! End-to-end tests of `herald-edge`: real nodes, real edges, and the real
//! `centrifuge` SDK / a plain EventSource / raw WebSockets driven by Node.js,
//! and a headless Chromium page.
//! One module per scenario; each names the guarantee of `docs/guarantees.md` it proves.

mod harness;

mod abuse;
mod auth;
mod bad_input;
mod bad_input_protobuf;
mod browser;
mod fanout;
mod framing;
mod presence;
mod protobuf;
mod sdk_failover;
mod shutdown;
mod sse;
mod sub_expiry;
