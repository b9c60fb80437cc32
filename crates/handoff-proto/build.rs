//! Compiles `proto/handoff` with protox (pure Rust), so no system `protoc` is needed: the
//! bus model with prost, the admin API with tonic (its descriptor set is kept for gRPC
//! server reflection).

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a target directory
    // shared by two checkouts reuses one compiled script for both.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());
    let events = protox::compile([root.join("handoff/v1/events.proto")], [&root])?;
    prost_build::Config::new().compile_fds(events)?;

    let admin = protox::compile([root.join("handoff/admin/v1/admin.proto")], [&root])?;
    std::fs::write(out.join("admin_descriptor.bin"), admin.encode_to_vec())?;
    tonic_prost_build::configure()
        // `handoffctl --json` prints the answers as they are.
        .message_attribute(
            ".",
            "#[derive(serde::Serialize)] #[serde(rename_all = \"camelCase\")]",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(admin)?;
    Ok(())
}
