//! Compiles the gRPC contracts with protox (pure Rust, no system `protoc`)
//! and writes the descriptor set used by server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "common/v1/common.proto",
    "gateway/admin/v1/admin.proto",
    "controlplane/v1/controlplane.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // A room message goes to every gateway stream with members in the
        // room: shared, not copied per stream.
        .bytes(".controlplane.v1.RoomMessage.payload")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
