//! Compiles the `.proto` files with protox (pure Rust), so no system `protoc` is needed.
//! With the `tonic` feature, tonic clients and servers are generated as well.

use std::io;

const PROTOS: &[&str] = &[
    "proto/dubbo/networking/v1alpha1/snp.proto",
    "proto/v1alpha1/snp.proto",
    "proto/snp/v1/mapping.proto",
];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"]).map_err(io::Error::other)?;
    if std::env::var_os("CARGO_FEATURE_TONIC").is_some() {
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(fds)
    } else {
        prost_build::Config::new().compile_fds(fds)
    }
}
