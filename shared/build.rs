//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates
//! the tonic clients and servers, plus a descriptor set for server reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files =
        ["common.proto", "agent.proto", "operator.proto"].map(|f| root.join("gantry/v1").join(f));
    println!("cargo:rerun-if-changed={}", root.display());

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("gantry_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // LogBatch is written by hand (src/log_batch.rs) so that runs of
    // lines can be sent as encoded once.
    // Every service decodes with `codec::GantryCodec`, so bytes that are
    // not a message are the sender's error (InvalidArgument), not Internal.
    tonic_prost_build::configure()
        .codec_path("crate::codec::GantryCodec")
        .extern_path(".gantry.v1.LogBatch", "crate::log_batch::LogBatch")
        .compile_fds(fds)?;
    Ok(())
}
