//! Subscribes to interfaces at a running shim and prints every change of their
//! applications, until Ctrl-C.
//!
//! ```sh
//! cargo run -p snp-client --example watch -- ENDPOINT NAMESPACE INTERFACE [INTERFACE...]
//! cargo run -p snp-client --example watch -- http://127.0.0.1:15051 default org.apache.dubbo.demo.DemoService
//! ```
//!
//! The crate documentation (`cargo doc -p snp-client --open`) shows how to start a shim for
//! it and register a mapping to see a change arrive.

use std::process::ExitCode;

use snp_client::{ClientConfig, MappingClient};
use snp_core::{AppSet, MappingKey};

const USAGE: &str = "usage: watch ENDPOINT NAMESPACE INTERFACE [INTERFACE...]\n\
                     e.g.  watch http://127.0.0.1:15051 default org.apache.dubbo.demo.DemoService";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, namespace, interfaces @ ..] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if interfaces.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let client = match MappingClient::connect(endpoint.clone(), ClientConfig::default()) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("watch: {e}");
            return ExitCode::from(2);
        }
    };
    for interface in interfaces {
        let key = MappingKey::new(namespace.as_str(), interface.as_str());
        let subscribed = client
            .subscribe(key, |key: &MappingKey, apps: &AppSet| {
                let names: Vec<&str> = apps.iter().collect();
                println!("{key} -> {names:?}");
            })
            .await;
        if let Err(e) = subscribed {
            eprintln!("watch: {e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "watching {} interface(s) of namespace {namespace} at {endpoint}; Ctrl-C stops",
        interfaces.len()
    );
    match tokio::signal::ctrl_c().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("watch: {e}");
            ExitCode::FAILURE
        }
    }
}
