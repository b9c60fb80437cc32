//! Compiles `proto/handoff/v1` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = protox::compile([root.join("handoff/v1/events.proto")], [&root])?;
    prost_build::Config::new().compile_fds(files)?;
    Ok(())
}
