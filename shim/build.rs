//! Two build steps:
//!
//! * the Nacos 2.x transport proto (`proto/`), compiled with protox into tonic code;
//! * the status page's debounce simulator, embedded: `snp-sim-wasm` compiled to
//!   `wasm32-unknown-unknown` and bound with wasm-bindgen by `scripts/build-sim-wasm.sh`, which
//!   writes `snp_sim_wasm.js` and `snp_sim_wasm_bg.wasm` to `$SNP_SIM_WEB_DIR` (default
//!   `<target>/snp-sim-web`). Without them the shim still builds (the wasm target and the
//!   wasm-bindgen CLI are not needed for ordinary development), with a warning, and the page
//!   says the simulator is not built into this binary. `SNP_REQUIRE_SIMULATOR=1` turns the
//!   warning into an error (the image build and scripts/test.sh set it).

use std::io;
use std::path::PathBuf;

fn main() -> io::Result<()> {
    compile_nacos_proto()?;
    embed_simulator();
    Ok(())
}

/// Compiles the Nacos 2.x transport proto (shim/proto) with protox, so no system `protoc`
/// is needed, into tonic servers (and clients, for the tests).
fn compile_nacos_proto() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let fds =
        protox::compile(["proto/nacos_grpc_service.proto"], ["proto"]).map_err(io::Error::other)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}

/// Copies the simulator's JS and wasm into OUT_DIR (see the top of this file).
fn embed_simulator() {
    println!("cargo:rerun-if-env-changed=SNP_SIM_WEB_DIR");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dir = match std::env::var_os("SNP_SIM_WEB_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| {
                if t.is_absolute() {
                    t
                } else {
                    manifest.join("..").join(t)
                }
            })
            .unwrap_or_else(|| manifest.join("../target"))
            .join("snp-sim-web"),
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let js = dir.join("snp_sim_wasm.js");
    let wasm = dir.join("snp_sim_wasm_bg.wasm");
    // The directory's mtime changes when the files first appear; the files' when rebuilt.
    let _ = std::fs::create_dir_all(&dir);
    println!("cargo:rerun-if-changed={}", dir.display());
    let built = js.is_file() && wasm.is_file();
    if built {
        println!("cargo:rerun-if-changed={}", js.display());
        println!("cargo:rerun-if-changed={}", wasm.display());
        copy(&js, &out.join("snp_sim_wasm.js"));
        copy(&wasm, &out.join("snp_sim_wasm_bg.wasm"));
    } else if std::env::var_os("SNP_REQUIRE_SIMULATOR").is_some_and(|v| v != "0") {
        panic!(
            "SNP_REQUIRE_SIMULATOR is set but the simulator is not built in {}: run scripts/build-sim-wasm.sh first",
            dir.display()
        );
    } else {
        println!(
            "cargo:warning=status page simulator not embedded: run scripts/build-sim-wasm.sh (looked in {})",
            dir.display()
        );
        write(
            &out.join("snp_sim_wasm.js"),
            b"// The simulator was not built into this binary.\n\
              export default async function init() {\n\
              \x20 throw new Error('the simulator is not built into this shim binary (build it with scripts/build-sim-wasm.sh, then rebuild the shim)');\n\
              }\n\
              export function simulate() { throw new Error('simulator not built'); }\n\
              export function defaultRollout() { return '{}'; }\n",
        );
        write(&out.join("snp_sim_wasm_bg.wasm"), b"");
    }
    write(
        &out.join("sim_built.rs"),
        if built { b"true" } else { b"false" },
    );
}

fn copy(from: &std::path::Path, to: &std::path::Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("copying {} to {}: {e}", from.display(), to.display());
    }
}

fn write(path: &std::path::Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("writing {}: {e}", path.display());
    }
}
