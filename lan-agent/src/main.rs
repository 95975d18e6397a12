//! `cairn`: parses the command line and runs the subcommand.

fn main() -> std::process::ExitCode {
    cairn_lan_agent::cli::main()
}
