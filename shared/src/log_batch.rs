//! `gantry.v1.LogBatch`, written by hand rather than generated, so that a
//! run of lines encoded once can be sent to many followers as it is.
//!
//! On the wire a `LogBatch` is its lines, each as field 1. Protobuf merges
//! repeated fields, so encoded batches laid end to end are one batch of all
//! their lines: the coordinator keeps each run of lines in its encoded form
//! (as it stores it) and builds a follower's message from those runs
//! without encoding a line again.
//!
//! Kept because figure 4 (docs/PERFORMANCE.md) needs it: with the generated
//! type, 100 followers reading at full speed left the producer 9% and 14%
//! of its rate (each follower decoding and encoding every line), against
//! 61–100% with runs encoded once.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

use crate::proto::LogLine;

/// Lines of one job, consecutive in seq: how agents send output in bulk, and
/// how `FollowJobLogs` hands it to clients.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogBatch {
    /// In seq order, with no gaps.
    pub lines: Vec<LogLine>,
    /// Further lines after `lines`, as encoded `LogBatch`es. Only senders
    /// set this; a decoded batch has every line in `lines`.
    pub encoded: Vec<Bytes>,
}

impl LogBatch {
    /// These lines, encoded once: what [`LogBatch::encoded`] holds.
    pub fn encode_lines(lines: &[LogLine]) -> Bytes {
        let len = encoding::message::encoded_len_repeated(1, lines);
        let mut buf = Vec::with_capacity(len);
        encoding::message::encode_repeated(1, lines, &mut buf);
        buf.into()
    }
}

impl From<Vec<LogLine>> for LogBatch {
    fn from(lines: Vec<LogLine>) -> Self {
        Self {
            lines,
            encoded: Vec::new(),
        }
    }
}

impl prost::Message for LogBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::message::encode_repeated(1, &self.lines, buf);
        for part in &self.encoded {
            buf.put_slice(part);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => encoding::message::merge_repeated(wire_type, &mut self.lines, buf, ctx).map_err(
                |mut e| {
                    e.push("LogBatch", "lines");
                    e
                },
            ),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::message::encoded_len_repeated(1, &self.lines)
            + self.encoded.iter().map(Bytes::len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.lines.clear();
        self.encoded.clear();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn line(seq: u64) -> LogLine {
        LogLine {
            seq,
            timestamp_ms: 1_700_000_000_000 + seq as i64,
            text: format!("line {seq} ünïcode"),
            ..Default::default()
        }
    }

    #[test]
    fn encoded_runs_decode_as_one_batch_after_the_plain_lines() {
        let batch = LogBatch {
            lines: vec![line(1)],
            encoded: vec![
                LogBatch::encode_lines(&[line(2), line(3)]),
                LogBatch::encode_lines(&[line(4)]),
            ],
        };
        let bytes = batch.encode_to_vec();
        assert_eq!(bytes.len(), batch.encoded_len());
        let decoded = LogBatch::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.lines, (1..=4).map(line).collect::<Vec<_>>());
        assert!(decoded.encoded.is_empty());
    }

    #[test]
    fn encode_lines_is_the_encoding_of_a_batch_of_those_lines() {
        let lines: Vec<_> = (1..=3).map(line).collect();
        assert_eq!(
            LogBatch::encode_lines(&lines).as_ref(),
            LogBatch::from(lines).encode_to_vec().as_slice()
        );
    }

    #[test]
    fn a_malformed_line_is_a_decode_error_naming_the_field() {
        // Field 1, length 5, but only 2 bytes follow.
        let err = LogBatch::decode([0x0a, 0x05, 0x08, 0x01].as_slice()).unwrap_err();
        assert!(err.to_string().contains("LogBatch.lines"), "{err}");
    }
}
