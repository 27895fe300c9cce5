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
//!   desired config, commands, acknowledgements, certificate requests) and the check
//!   specifications inside them.
//! - [`codec`]: size-limited, version-checked decoding (whole payloads, or batches row by
//!   row) and encoding.
//! - [`text`]: the bounds on texts inside rows and the repair that applies them.
//! - [`redact`]: checks and free text as readers without the right to secrets see them.

pub mod check;
pub mod codec;
pub mod payload;
pub mod redact;
pub mod text;
pub mod topic;

pub use check::*;
pub use codec::{DecodeError, RowError, decode, decode_limited, decode_rows, encode};
pub use payload::*;
pub use topic::{AgentTopic, Topic, TopicError};

/// The protocol version carried in every payload's `v` field.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest payload the control plane accepts on any topic, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The largest desired config (`agents/{id}/config`), in bytes: the one message that grows
/// with the checks assigned to an agent (about 250 bytes per HTTP check, so ~3,900 of them).
/// It stays under the 1 MiB MQTT packet limit of the front door and the agent, with room
/// for the topic and headers. The control plane refuses a check that would push a region's
/// config over it, and never publishes one that is over.
pub const MAX_CONFIG_BYTES: usize = 960 * 1024;
