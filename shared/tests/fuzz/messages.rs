//! Protobuf decoding of every message an agent or a client sends to Gantry
//! (and of the coordinator's, which agents decode).

use std::{collections::HashMap, fmt::Debug};

use gantry_shared::proto;
use proptest::{collection::vec, prelude::*, sample::select, sample::Index};
use prost::Message;
use prost_types::{field_descriptor_proto::Label, field_descriptor_proto::Type, DescriptorProto};

use super::fuzz_config;

/// `v` in protobuf's base-128 varint encoding.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// Message types by full name, e.g. ".gantry.v1.Register.LabelsEntry".
type Types = HashMap<String, DescriptorProto>;

/// Adds each type of `messages`, and the types nested in them, to `all`.
fn collect(scope: &str, messages: &[DescriptorProto], all: &mut Types) {
    for m in messages {
        let name = format!("{scope}.{}", m.name());
        collect(&name, &m.nested_type, all);
        all.insert(name, m.clone());
    }
}

/// Strings for string fields: empty, names, hostile ones.
const STRINGS: [&str; 8] = ["", "prod", "main", "-rf", "../etc", "a\0b", "é😀", "a@{1}"];

/// A well-formed encoding of message type `name`, every choice (which
/// fields, how many times, what values) read from `dice`: it reaches fields
/// deep in nested messages, which random bytes almost never do. Gantry's
/// protos have only varint and length-delimited fields.
fn message_bytes(types: &Types, name: &str, dice: &mut Vec<u32>) -> Vec<u8> {
    const K: u64 = 0x9e37_79b9_7f4a_7c15; // spreads a die over all 64 bits
    let mut out = Vec::new();
    for f in &types[name].field {
        let times = dice.pop().unwrap_or(0) % if f.label() == Label::Repeated { 4 } else { 2 };
        for _ in 0..times {
            let (v, key) = (dice.pop().unwrap_or(0), (f.number() as u64) << 3);
            let delimited = match f.r#type() {
                Type::Message => message_bytes(types, f.type_name(), dice),
                Type::String | Type::Bytes => STRINGS[v as usize % 8].into(),
                // Integers, bools and enums (wire type 0): small values, or any.
                _ => {
                    let v = [u64::from(v / 2 % 16), u64::from(v).wrapping_mul(K)][v as usize % 2];
                    out.extend([varint(key), varint(v)].concat());
                    continue;
                }
            };
            out.extend([varint(key | 2), varint(delimited.len() as u64), delimited].concat());
        }
    }
    out
}

/// Bytes for the decoders: random ones, and well-formed messages of the
/// types sent (see [`message_bytes`]), sometimes cut short or with a byte
/// changed.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut types = Types::new();
    for file in &set.file {
        collect(
            &format!(".{}", file.package()),
            &file.message_type,
            &mut types,
        );
    }
    // AgentMessage, whose bodies nest deepest, a third of the time.
    let name = prop_oneof![1 => Just("AgentMessage"), 2 => select(SENT)];
    let choices = (
        name,
        vec(any::<u32>(), 0..300),
        any::<Index>(),
        any::<u8>(),
        0..4,
    );
    let message = choices.prop_map(move |(name, mut dice, at, byte, damage)| {
        let mut bytes = message_bytes(&types, &format!(".gantry.v1.{name}"), &mut dice);
        let at = at.index(bytes.len() + 1);
        match damage {
            0 => bytes.truncate(at),
            1 if at < bytes.len() => bytes[at] ^= byte,
            _ => {}
        }
        bytes
    });
    prop_oneof![1 => vec(any::<u8>(), 0..256), 4 => message]
}

/// Decoding `bytes` as `M` fails or succeeds without panicking, and a
/// decoded message re-encodes to bytes that decode to the same message.
fn decodes<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(msg) = M::decode(bytes) {
        let again = msg.encode_to_vec();
        prop_assert_eq!(again.len(), msg.encoded_len());
        let back = M::decode(again.as_slice());
        prop_assert!(back.as_ref() == Ok(&msg), "{:?} from {:?}", back, msg);
    }
    Ok(())
}

/// Lists the messages sent to Gantry's servers as `SENT`, and defines
/// `decode_all`, which runs [`decodes`] for each of them.
macro_rules! sent {
    ($($ty:ident)*) => {
        const SENT: &[&str] = &[$(stringify!($ty)),*];
        fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
            $(decodes::<proto::$ty>(bytes)?;)*
            Ok(())
        }
    };
}

sent! {
    // AgentService: the Attach stream, each body of it, and Join.
    AgentMessage Register Heartbeat JobEvent JobFinished LogLine LogBatch Drain ContainerOutput
    JoinRequest
    // What the coordinator sends on the Attach stream, which agents decode.
    CoordinatorMessage
    // Every request of OperatorService.
    ListAppsRequest ListEnvironmentsRequest ListAgentsRequest DeployRequest GetJobRequest
    ListJobsRequest CancelJobRequest StreamJobLogsRequest RollbackRequest ListReleasesRequest
    GetEnvironmentStateRequest DiffEnvironmentsRequest ListBranchesRequest CreateBranchRequest
    StreamAppLogsRequest ApproveRequest RevokeAgentRequest ListAuditRequest WhoAmIRequest
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Every message an agent or a client sends (and the coordinator's,
    /// which agents decode) decodes any bytes without panicking, and
    /// re-encodes to the same message.
    #[test]
    fn messages_decode_any_bytes(bytes in wire_bytes()) {
        decode_all(&bytes)?;
    }
}
