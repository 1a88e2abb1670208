//! The gRPC codec of every Gantry service: prost's, except that a message
//! that does not decode is the sender's fault, `InvalidArgument` naming the
//! message, not `Internal` (prost's codec says `Internal`, which tells the
//! sender that the receiver is broken).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::ProstEncoder;

/// prost encoding, with decode failures answered as `InvalidArgument`.
#[derive(Debug, Clone)]
pub struct GantryCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for GantryCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for GantryCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = GantryDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        GantryDecoder(PhantomData)
    }
}

/// Decodes `U`; bytes that are not one are `InvalidArgument`.
#[derive(Debug, Clone)]
pub struct GantryDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for GantryDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the message is not a valid {}: {e}; send what the protocol in proto/gantry/v1 describes",
                message_name::<U>()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// `U`'s name without its Rust path, e.g. `DeployRequest`.
fn message_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    #[test]
    fn the_name_is_the_message_s() {
        assert_eq!(message_name::<proto::DeployRequest>(), "DeployRequest");
    }
}
