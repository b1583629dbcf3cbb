//! Compiles `herald/v1/*.proto` with the vendored `protoc`, so a fresh
//! machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "herald/v1/publisher.proto",
        "herald/v1/admin.proto",
        "herald/v1/raft.proto",
        "herald/v1/edge_link.proto",
    ];
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("herald_descriptor.bin"))
        .compile_with_config(config, &files, &["."])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
