//! Generates the kubelet APIs the agent serves (device plugin v1beta1, DRA
//! v1 and v1beta1, plugin registration) with protoc (Debian's
//! protobuf-compiler, installed by hack/prereqs.sh).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/deviceplugin.proto",
        "proto/dra_v1.proto",
        "proto/dra_v1beta1.proto",
        "proto/pluginregistration.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
