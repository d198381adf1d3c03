//! Generates the snapshot contract. protoc comes from `protoc-bin-vendored` unless `PROTOC`
//! names one, so a plain `cargo build` works on a fresh machine without an apt step.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure()
        // Encoded once by the control plane and shared by every stream (see discovery.proto).
        .bytes(".pavilion.v1.SnapshotResponse.snapshot")
        .bytes(".pavilion.v1.SnapshotResponse.delta")
        .bytes(".pavilion.v1.SnapshotDelta.tail")
        .bytes(".pavilion.v1.RoutePiece.route")
        // Slices of the received buffer, not copies (see snapshot.proto).
        .bytes(".pavilion.v1.SnapshotFrame.routes")
        .compile_protos(
            &[
                "proto/pavilion/v1/snapshot.proto",
                "proto/pavilion/v1/discovery.proto",
                "proto/aggregate/gateway/v1/command.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
