//! Compiles the Nacos 2.x transport proto (shim/proto) with protox, so no system `protoc`
//! is needed, into tonic servers (and clients, for the tests).

use std::io;

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let fds =
        protox::compile(["proto/nacos_grpc_service.proto"], ["proto"]).map_err(io::Error::other)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}
