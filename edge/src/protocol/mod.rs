//! The Centrifugo client protocol (v2, JSON) as Herald speaks it: framing
//! ([`frame`]: newline-delimited commands in, replies and pushes out),
//! every client-visible code ([`codes`]), publication encoding
//! ([`publication`]), and one module per command under [`cmd`].
//! docs/protocol.md ("Client protocol (edge)") lists every field.

pub mod cmd;
pub mod codes;
pub mod frame;
pub mod publication;
