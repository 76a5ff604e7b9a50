//! Generates the Rust code for the gRPC contracts in this folder.
//!
//! containerd's snapshots service is generated here with its *server* side (containerd-client
//! only ships clients); its `containerd.types.Mount` message is mapped onto containerd-client's
//! type so the two crates share one definition. Our own services (`dragonfly/...`) are generated
//! with both sides.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let containerd = "containerd/github.com/containerd/containerd/api";
    let snapshots = format!("{containerd}/services/snapshots/v1/snapshots.proto");
    println!("cargo:rerun-if-changed=containerd");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(".containerd.types", "::containerd_client::types")
        .compile_protos(&[snapshots.as_str()], &["containerd"])?;
    println!("cargo:rerun-if-changed=dragonfly");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Piece bytes are passed along without copying.
        .bytes(".dragonfly.peer.v1.GetPieceResponse.data")
        .compile_protos(
            &[
                "dragonfly/scheduler/v1/scheduler.proto",
                "dragonfly/peer/v1/peer.proto",
                "dragonfly/dfdaemon/v1/download.proto",
                "dragonfly/dfdaemon/v1/image.proto",
                "dragonfly/manager/v1/manager.proto",
                "dragonfly/manager/v1/certificate.proto",
            ],
            &["."],
        )?;
    Ok(())
}
