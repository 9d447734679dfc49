//! The long-connection protocol, pure: bytes in, values out. No actors, no I/O.
//!
//! - [`frame`]: the `pbbp2.Frame` protobuf, frame kinds, ping and response builders;
//! - [`chunk`]: reassembly of messages split into `sum`/`seq` parts;
//! - [`endpoint`]: endpoint discovery types, `ClientConfig`, failure classification;
//! - [`event`]: event envelopes (schema 2.0 and 1.0) and `card.action.trigger`.
//!
//! Facts come from `lark-ws-protocol.md` (section numbers are cited per item) and the
//! frames in `tests/fixtures/frames/`.

pub mod chunk;
pub mod endpoint;
pub mod event;
pub mod frame;
pub mod handshake;

pub use chunk::{ChunkAssembler, ChunkError, ChunkLimits, ChunkOutcome};
pub use frame::{AckPayload, ChunkPosition, Frame, FrameKind, FrameView, Header};

/// Errors of the protocol layer. Each is a rejection of one input; none is fatal to a
/// connection: log it, answer what can be answered, drop the rest.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes are not a protobuf `Frame`. Drop the message (it cannot be answered: its
    /// ids are unknown) and log it.
    #[error("frame does not decode: {0}")]
    Decode(#[source] prost::DecodeError),
    /// `sum`/`seq` headers out of range or not numbers. Drop the part and log it.
    #[error("bad chunk header: {reason}")]
    BadChunkHeader {
        /// What was wrong.
        reason: &'static str,
    },
    /// The payload is not the JSON shape expected. Answer 500 for callbacks, log it.
    #[error("payload is not a valid event envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// A part of a chunked message was rejected by the
    /// [`ChunkAssembler`](chunk::ChunkAssembler) (bad position, inconsistent `sum`, a memory
    /// limit). Nothing is kept for that `message_id`: drop the frame unanswered and log it;
    /// the platform re-pushes the event.
    #[error("chunk rejected: {0}")]
    Chunk(#[from] chunk::ChunkError),
}
