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
//! Format 1 is the `postcard` encoding of [`Command`] as it stood when the format was frozen
//! (its variants by declaration index, struct fields by position, including the ward-core
//! types inside). **Format 1 is frozen**: once written, its bytes must decode to the same
//! command on every later release. A change to the shape of a `Command` variant or of any
//! type it carries (a reordered variant, an added field) needs a new format number and a
//! decoder for every older one.
//!
//! Format 2 ([`LogEntry::FORMAT`]) is format 1 plus the variants appended after it
//! ([`Command::AttestAgentFirstUse`]). postcard numbers variants by position, so appending
//! one leaves every older variant's bytes as they were: a command that format 1 can express
//! is still written as format 1 ([`LogEntry::format_of`]), and only the new variants are
//! written as format 2. Replicas of two adjacent versions therefore keep running together
//! during a rolling upgrade until the first command that only the newer one knows is
//! proposed. The golden-bytes fixtures in `tests/data/log_entry_format1.hex` (one per
//! variant, each in its own format) fail the test suite when an encoding changes.
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

/// How many leading variants of [`Command`] format 1 has.
const FORMAT_1_VARIANTS: u32 = 26;

impl LogEntry {
    /// The newest format this release reads and writes: `postcard` of [`Command`] with every
    /// variant.
    pub const FORMAT: u16 = 2;

    /// An entry in the oldest format that can express `command`.
    pub fn new(request_id: u128, command: Command) -> Self {
        Self { format: Self::format_of(&command), request_id, command }
    }

    /// The oldest format that can express `command`: 2 for the variants added after format
    /// 1 was frozen, else 1.
    pub fn format_of(command: &Command) -> u16 {
        match command {
            Command::AttestAgentFirstUse(_) => 2,
            _ => 1,
        }
    }

    /// The entry's bytes, as they go into the log.
    ///
    /// The command is written in [`LogEntry::format_of`] its command, whatever `format`
    /// says.
    #[expect(
        clippy::expect_used,
        reason = "postcard into a Vec fails only for a type serde cannot describe (a sequence \
                  of unknown length); Command has none, and the golden tests encode every variant"
    )]
    pub fn encode(&self) -> Vec<u8> {
        let command = postcard::to_stdvec(&self.command).expect("every Command encodes");
        Envelope {
            format: u32::from(Self::format_of(&self.command)),
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
        let format = match env.format {
            1 => 1,
            2 => 2,
            other => return Err(StoreError::UnknownLogFormat(other)),
        };
        // postcard writes the variant index first, as a varint.
        if let (1, Ok((variant, _))) = (format, postcard::take_from_bytes::<u32>(&env.command))
            && variant >= FORMAT_1_VARIANTS
        {
            return Err(StoreError::BadLogEntry(format!(
                "a format-1 entry holds command variant {variant}, added in a later format"
            )));
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
        Ok(Self { format, request_id: u128::from_be_bytes(request_id), command })
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
        for format in [0, 3, u32::MAX] {
            env.format = format;
            let err = LogEntry::decode(&env.encode_to_vec()).unwrap_err();
            assert_eq!(err, StoreError::UnknownLogFormat(format));
        }
    }

    #[test]
    fn only_commands_added_after_format_1_are_written_as_format_2() {
        let old = entry();
        assert_eq!(old.format, 1);
        assert_eq!(Envelope::decode(old.encode().as_slice()).unwrap().format, 1);
        let att = crate::AgentAttestation {
            id: ward_core::AgentId(
                ward_core::SpiffeId::parse("spiffe://example.org/spire/agent/aws_iid/1/r/i")
                    .unwrap(),
            ),
            attestation_type: "aws_iid".into(),
            serial: "1".into(),
            expires_at: 5,
            selectors: ward_core::SelectorSet::default(),
            can_reattest: false,
        };
        let new = LogEntry::new(7, Command::AttestAgentFirstUse(att));
        assert_eq!(new.format, 2);
        let mut env = Envelope::decode(new.encode().as_slice()).unwrap();
        assert_eq!(env.format, 2);
        assert_eq!(LogEntry::decode(&env.encode_to_vec()).unwrap(), new);
        // The same bytes claimed as format 1: a replica must not take them.
        env.format = 1;
        assert_eq!(
            LogEntry::decode(&env.encode_to_vec()).unwrap_err(),
            StoreError::BadLogEntry(
                "a format-1 entry holds command variant 26, added in a later format".into()
            )
        );
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
