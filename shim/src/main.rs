//! The `snp-shim` binary: parses flags, sets up logging, runs the shim until SIGTERM.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use snp_shim::app::{self, ShimHandle};
use snp_shim::config::{Cli, Command, LogFormat, ServeArgs};
use tracing_subscriber::EnvFilter;

fn init_logging(args: &ServeArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        eprintln!("invalid --log filter {:?} ({e}); using \"info\"", args.log);
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd(crd)) => {
            match snp_shim::crd::crd_yaml(&crd.crd_group, &crd.crd_version) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("snp-shim: generating the CRD failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::PrepareDataDir(p)) => match snp_shim::journal::prepare_data_dir(&p) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("snp-shim: preparing {}: {e}", p.data_dir.display());
                ExitCode::FAILURE
            }
        },
        Some(Command::Serve) | None => {
            // Nonsense values are usage errors, reported like clap's own (exit code 2).
            if let Err(e) = cli.serve.validate() {
                Cli::command()
                    .error(clap::error::ErrorKind::ValueValidation, e)
                    .exit();
            }
            serve(cli.serve)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut shim: ShimHandle = match app::start(args).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "snp-shim failed to start");
                return ExitCode::FAILURE;
            }
        };
        let signal = app::termination_signal();
        let result = tokio::select! {
            () = signal => {
                shim.shutdown();
                shim.join().await
            }
            r = shim.join() => r,
        };
        match result {
            Ok(report) if report.drained => ExitCode::SUCCESS,
            Ok(report) => {
                tracing::error!(
                    pending_keys = report.pending_keys,
                    "exiting with mappings not written"
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                tracing::error!(error = %e, "snp-shim failed");
                ExitCode::FAILURE
            }
        }
    })
}
