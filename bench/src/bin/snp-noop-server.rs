//! `snp-noop-server --addr 127.0.0.1:0`: a do-nothing gRPC server with the shim's protos
//! (both registration flavours, `snp.v1.MappingService`). Prints `LISTENING host:port` on
//! stdout once it accepts connections; stops on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

/// A do-nothing gRPC server with the shim's protos: the upper bound of figure 4.
#[derive(Debug, Parser)]
#[command(name = "snp-noop-server", version)]
struct Cli {
    /// Listen address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:15061")]
    addr: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The shim's runtime: tokio's multi-threaded default (one worker per core).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("snp-noop-server: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r: anyhow::Result<()> = rt.block_on(async move {
        let (listener, addr) = snp_bench::noop::bind(cli.addr).await?;
        println!("LISTENING {addr}");
        let mut term = signal(SignalKind::terminate())?;
        snp_bench::noop::serve(listener, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snp-noop-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
