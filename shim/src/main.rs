use clap::Parser;

fn main() {
    let _cli = snp_shim::config::Cli::parse();
}
