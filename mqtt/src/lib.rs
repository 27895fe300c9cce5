//! Vantage wire protocol: the MQTT topic tree, the versioned JSON payloads and their codec.
//!
//! This crate is the only place where wire types are defined. It depends on serde and nothing
//! that does I/O: no tokio, no MQTT client, no SQL. Every type here that derives `Serialize` is a
//! compatibility promise between agents and control planes of different releases, so payloads
//! carry a `v` field and the codec refuses versions it does not know.
//!
//! Layout:
//! - [`topic`]: building and parsing topic names, agent-id rules, the allowed-topic rules.
//! - [`check`]: the check specifications of every check type.
//! - [`payload`]: the message types (hello, status, heartbeat, metrics, results, events,
//!   desired config, commands, acknowledgements) and the check specifications inside them.
//! - [`codec`]: size-limited, version-checked decoding and encoding.

pub mod check;
pub mod codec;
pub mod payload;
pub mod topic;

pub use check::*;
pub use codec::{DecodeError, decode, encode};
pub use payload::*;
pub use topic::{AgentTopic, Topic, TopicError};

/// The protocol version carried in every payload's `v` field.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest payload the control plane accepts on any topic, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
