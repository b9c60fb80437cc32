//! Compiles `proto/handoff/v1` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a target directory
    // shared by two checkouts reuses one compiled script for both.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = protox::compile([root.join("handoff/v1/events.proto")], [&root])?;
    prost_build::Config::new().compile_fds(files)?;
    Ok(())
}
