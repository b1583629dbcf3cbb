//! The Centrifugo client protocol (v2) as Herald speaks it, in JSON and in
//! Protobuf: JSON framing ([`frame`]: newline-delimited commands in,
//! replies and pushes out), Protobuf framing ([`delimited`]: varint length
//! prefixes) and messages ([`protobuf`]), the choice between them
//! ([`format`]), every client-visible code ([`codes`]), publication
//! encoding ([`publication`]), and one module per command under [`cmd`].
//! docs/protocol.md ("Client protocol (edge)") lists every field.

pub mod cmd;
pub mod codes;
pub mod delimited;
pub mod format;
pub mod frame;
pub mod protobuf;
pub mod publication;
