//! Compiles `herald/v1/*.proto` (messages and gRPC services) and
//! `centrifugal/client/v2/client.proto` (messages only: the edge's
//! Protobuf client protocol) with the vendored `protoc`, so a fresh machine
//! needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "herald/v1/publisher.proto",
        "herald/v1/admin.proto",
        "herald/v1/raft.proto",
        "herald/v1/edge_link.proto",
    ];
    let client_files = ["centrifugal/client/v2/client.proto"];
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    config.bytes(["."]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("herald_descriptor.bin"))
        .compile_with_config(config, &files, &["."])?;
    // Kept out of the gRPC reflection descriptor: it is not a gRPC API.
    let mut client = tonic_prost_build::Config::new();
    client.protoc_executable(&protoc);
    client.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_with_config(client, &client_files, &["."])?;
    for f in files.iter().chain(&client_files) {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
