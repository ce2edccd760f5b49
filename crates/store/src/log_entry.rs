//! The replicated log's entry format: a versioned envelope around a [`Command`].
//!
//! Every write travels through the Raft log as the bytes of a [`LogEntry`]. The envelope is a
//! small protobuf message, so it can gain fields without breaking older readers:
//!
//! | field | tag | type | meaning |
//! |---|---|---|---|
//! | `format` | 1 | `uint32` | how `command` is encoded |
//! | `request_id` | 2 | `bytes` (16, big-endian) | the proposer's id of this request |
//! | `command` | 3 | `bytes` | the encoded [`Command`] |
//!
//! Format 1 ([`LogEntry::FORMAT`]) is the `postcard` encoding of today's [`Command`] (its
//! variants by declaration index, struct fields by position, including the ward-core types
//! inside). **Format 1 is frozen**: once written, its bytes must decode to the same command on
//! every later release. A change to the shape of `Command` or of any type it carries (a new
//! or reordered variant, an added field) gets a new format number; the new code writes the
//! new format and keeps a decoder for every older one, so replicas of two adjacent versions
//! can run together during a rolling upgrade. The golden-bytes fixtures in
//! `tests/data/log_entry_format1.hex` (one per variant) fail the test suite when an encoding
//! changes.
//!
//! A replica refuses an entry whose format it does not know ([`StoreError::UnknownLogFormat`]):
//! applying it would diverge from the replicas that do, so the refusal is fatal and the
//! replica stops until it is upgraded. ward has no replicated `cluster_version` gate yet:
//! during a rolling upgrade, operators finish upgrading every replica before any of them
//! proposes a command in a newer format.
//!
//! The request id lets a retried proposal (a lost reply) apply once: the store keeps the ids
//! of the last [`crate::REQUEST_ID_RETAIN`] applied entries and skips an entry whose id it has
//! applied already (see [`crate::Store::apply_committed`]). Id 0 means "no id" and is never
//! deduplicated.

use prost::Message;

use crate::command::Command;
use crate::error::StoreError;

/// One entry of the replicated log: a command, the format it is encoded in and the id of the
/// request that proposed it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogEntry {
    /// How [`LogEntry::command`] is encoded on the wire ([`LogEntry::FORMAT`] for entries
    /// this release writes).
    pub format: u16,
    /// The proposer's random id of this request; 0 means none (never deduplicated).
    pub request_id: u128,
    /// The command.
    pub command: Command,
}

/// The wire envelope (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(uint32, tag = "1")]
    format: u32,
    #[prost(bytes = "vec", tag = "2")]
    request_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    command: Vec<u8>,
}

impl LogEntry {
    /// The format this release writes: `postcard` of [`Command`].
    pub const FORMAT: u16 = 1;

    /// An entry in the current format.
    pub fn new(request_id: u128, command: Command) -> Self {
        Self { format: Self::FORMAT, request_id, command }
    }

    /// The entry's bytes, as they go into the log.
    ///
    /// The command is always written in [`LogEntry::FORMAT`], whatever `format` says: this
    /// release has no encoder for any other.
    #[expect(
        clippy::expect_used,
        reason = "postcard into a Vec fails only for a type serde cannot describe (a sequence \
                  of unknown length); Command has none, and the golden tests encode every variant"
    )]
    pub fn encode(&self) -> Vec<u8> {
        let command = postcard::to_stdvec(&self.command).expect("every Command encodes");
        Envelope {
            format: u32::from(Self::FORMAT),
            request_id: self.request_id.to_be_bytes().to_vec(),
            command,
        }
        .encode_to_vec()
    }

    /// Parses bytes written by [`LogEntry::encode`] (of this or an older release).
    ///
    /// # Errors
    /// [`StoreError::UnknownLogFormat`] for a format this release cannot read (fatal for a
    /// replica); [`StoreError::BadLogEntry`] for bytes that are not an entry (a bad envelope,
    /// a request id that is not 16 bytes, or a command that does not decode exactly).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let env = Envelope::decode(bytes).map_err(|e| StoreError::BadLogEntry(e.to_string()))?;
        if env.format != u32::from(Self::FORMAT) {
            return Err(StoreError::UnknownLogFormat(env.format));
        }
        let request_id: [u8; 16] = env.request_id.as_slice().try_into().map_err(|_| {
            StoreError::BadLogEntry(format!(
                "request id has {} bytes, not 16",
                env.request_id.len()
            ))
        })?;
        let command = match postcard::take_from_bytes::<Command>(&env.command) {
            Ok((command, [])) => command,
            Ok((_, rest)) => {
                return Err(StoreError::BadLogEntry(format!(
                    "{} bytes after the command",
                    rest.len()
                )));
            }
            Err(e) => return Err(StoreError::BadLogEntry(format!("command: {e}"))),
        };
        Ok(Self { format: Self::FORMAT, request_id: u128::from_be_bytes(request_id), command })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> LogEntry {
        LogEntry::new(
            0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            Command::PruneEntries { expires_before: 5 },
        )
    }

    #[test]
    fn round_trips() {
        let e = entry();
        assert_eq!(LogEntry::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn refuses_a_format_it_does_not_know() {
        let mut env = Envelope::decode(entry().encode().as_slice()).unwrap();
        for format in [0, 2, u32::MAX] {
            env.format = format;
            let err = LogEntry::decode(&env.encode_to_vec()).unwrap_err();
            assert_eq!(err, StoreError::UnknownLogFormat(format));
        }
    }

    #[test]
    fn refuses_malformed_entries() {
        let good = Envelope::decode(entry().encode().as_slice()).unwrap();
        let short_id = Envelope { request_id: vec![1; 15], ..good.clone() };
        assert_eq!(
            LogEntry::decode(&short_id.encode_to_vec()).unwrap_err(),
            StoreError::BadLogEntry("request id has 15 bytes, not 16".into())
        );
        let mut trailing = good.clone();
        trailing.command.push(0);
        assert_eq!(
            LogEntry::decode(&trailing.encode_to_vec()).unwrap_err(),
            StoreError::BadLogEntry("1 bytes after the command".into())
        );
        let unknown_variant = Envelope { command: vec![200], ..good };
        assert!(matches!(
            LogEntry::decode(&unknown_variant.encode_to_vec()),
            Err(StoreError::BadLogEntry(m)) if m.starts_with("command: ")
        ));
        assert!(matches!(LogEntry::decode(&[0xff, 0xff]), Err(StoreError::BadLogEntry(_))));
    }
}
