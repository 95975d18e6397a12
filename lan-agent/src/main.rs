//! `cairn`: parses the command line and runs the subcommand.

fn main() -> std::process::ExitCode {
    // One process-wide TLS provider (ring), before anything builds a TLS client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cairn_lan_agent::cli::main()
}
