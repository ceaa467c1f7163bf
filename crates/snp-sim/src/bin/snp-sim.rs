//! `snp-sim`: runs a rollout simulation natively and prints its report as JSON.
//!
//! Reads the rollout as JSON from the file named by the first argument, or from stdin
//! (empty input: the defaults). The status page's simulator prints the very same JSON for
//! the same input; the browser test compares the two.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let input = match std::env::args_os().nth(1) {
        Some(path) => std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "snp-sim: reading {}: {e}",
                std::path::Path::new(&path).display()
            )
        }),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map(|_| s)
                .map_err(|e| format!("snp-sim: reading stdin: {e}"))
        }
    };
    match input.and_then(|i| snp_sim::simulate_json(&i).map_err(|e| format!("snp-sim: {e}"))) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
