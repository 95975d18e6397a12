//! The `cairn` command line. `agent` runs an agent; every other subcommand is a client of a
//! running agent's HTTP API, like Consul's CLI. Flags are spelled Consul's way (`-recurse`,
//! `-data-dir=/x`); see [`cairn_shared::argv`].

pub mod acl;
pub mod agent;
pub mod catalog;
pub mod client;
pub mod config;
pub mod event;
pub mod kv;
pub mod lock;
pub mod maint;
pub mod members;
pub mod monitor;
pub mod operator;
pub mod query;
pub mod rtt;
pub mod services;
pub mod tls;
pub mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    about = "Service discovery, health checking and configuration, speaking Consul's API",
    version = crate::version::VERSION,
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent (client, server, or -dev)
    // A flag given twice takes the last value, as Go's flag package does.
    #[command(args_override_self = true)]
    Agent(Box<agent::AgentArgs>),
    /// Read and write the key/value store
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// List datacenters, nodes and services in the catalog
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Register and deregister services with the local agent
    #[command(subcommand)]
    Services(services::ServicesCommand),
    /// Node and service maintenance mode
    Maint(maint::MaintArgs),
    /// Make the agent re-read its configuration files
    Reload(ReloadArgs),
    /// Run a command while holding a lock or semaphore
    Lock(lock::LockArgs),
    /// Fire a user event
    Event(event::EventArgs),
    /// Run a handler whenever a view of the data changes
    Watch(watch::WatchArgs),
    /// Generate a new gossip encryption key
    Keygen,
    /// Estimated round-trip time between two nodes
    Rtt(rtt::RttArgs),
    /// List the members of the gossip pool
    Members(members::MembersArgs),
    /// Stream the agent's log lines
    Monitor(monitor::MonitorArgs),
    /// Make the agent join a gossip pool through other agents
    Join(members::JoinArgs),
    /// Make the agent leave its pool gracefully and stop
    Leave(members::LeaveArgs),
    /// Mark a failed member as left (or forget it with -prune)
    ForceLeave(members::ForceLeaveArgs),
    /// List, install, use and remove gossip encryption keys on every member
    Keyring(members::KeyringArgs),
    /// Raft operations on the servers
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// Save, restore and inspect snapshots of the whole state
    #[command(subcommand)]
    Snapshot(operator::SnapshotCommand),
    /// Write, read, list and delete config entries
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Create, list, read, delete and execute prepared queries
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// Bootstrap ACLs; manage tokens, policies and roles
    #[command(subcommand)]
    Acl(Box<acl::AclCommand>),
    /// Exchange an auth method's bearer token for an ACL token
    Login(acl::LoginArgs),
    /// Destroy the token a login made (the one given with -token)
    Logout(acl::LogoutArgs),
    /// Create a CA and certificates for servers, clients and WAN routers
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Print the version
    Version(VersionArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    http: client::HttpFlags,
}

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Output format: pretty or json
    #[arg(long, default_value = "pretty")]
    pub format: String,
}

/// Entry point for `main`: parse, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let args = cairn_shared::argv::normalise(Cli::command(), std::env::args().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Go's flag package exits 1 on usage errors; help is not an error.
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run(cli));
    // Blocking reads of stdin (kv put -) must not keep the process alive.
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// Runs a parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Agent(args) => agent::run(*args).await,
        Command::Kv(cmd) => kv::run(cmd).await,
        Command::Catalog(cmd) => catalog::run(cmd).await,
        Command::Services(cmd) => services::run(cmd).await,
        Command::Maint(args) => maint::run(args).await,
        Command::Reload(args) => reload(&args).await,
        Command::Lock(args) => lock::run(args).await,
        Command::Event(args) => event::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Rtt(args) => rtt::run(args).await,
        Command::Members(args) => members::members(args).await,
        Command::Join(args) => members::join(args).await,
        Command::Leave(args) => members::leave(args).await,
        Command::ForceLeave(args) => members::force_leave(args).await,
        Command::Keyring(args) => members::keyring(args).await,
        Command::Operator(cmd) => operator::run(cmd).await,
        Command::Snapshot(cmd) => operator::snapshot(cmd).await,
        Command::Config(cmd) => config::run(cmd).await,
        Command::Monitor(a) => monitor::run(a).await,
        Command::Keygen => {
            println!("{}", crate::gossip::keyring::generate());
            0
        }
        Command::Tls(cmd) => tls::run(cmd),
        Command::Acl(cmd) => acl::run(*cmd).await,
        Command::Login(a) => acl::login(a).await,
        Command::Logout(a) => acl::logout(a).await,
        Command::Query(cmd) => query::run(cmd).await,
        Command::Version(args) => version(&args),
    }
}

fn version(args: &VersionArgs) -> u8 {
    use crate::version::{BUILD_DATE, PROTOCOL_LINE, REVISION, VERSION};
    match args.format.as_str() {
        "pretty" => {
            println!("Cairn v{VERSION}");
            if !REVISION.is_empty() {
                println!("Revision {REVISION}");
            }
            if !BUILD_DATE.is_empty() {
                println!("Build Date {BUILD_DATE}");
            }
            println!("{PROTOCOL_LINE}");
            0
        }
        "json" => {
            let body = serde_json::json!({
                "Version": VERSION,
                "Revision": REVISION,
                "Prerelease": "",
                "BuildDate": BUILD_DATE,
                "RPC": {"Default": 2, "Min": 2, "Max": 3},
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
            0
        }
        other => {
            eprintln!("Unknown format: {other}");
            1
        }
    }
}

async fn reload(args: &ReloadArgs) -> u8 {
    let client = match client::Client::new(&args.http) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match client
        .put("/v1/agent/reload", &[], Vec::new())
        .await
        .and_then(|r| r.ok())
    {
        Ok(_) => {
            println!("Configuration reload triggered");
            0
        }
        Err(e) => fail(format!("Error reloading: {e}")),
    }
}

/// Prints an error the way Consul's CLI does (to stderr) and returns exit code 1.
pub(crate) fn fail(msg: impl std::fmt::Display) -> u8 {
    eprintln!("{msg}");
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = args.iter().map(|a| (*a).to_string()).collect();
        Cli::try_parse_from(cairn_shared::argv::normalise(Cli::command(), argv)).unwrap()
    }

    #[test]
    fn an_agent_flag_given_twice_takes_the_last_and_lists_still_gather() {
        let Command::Agent(a) = parse(&[
            "cairn",
            "agent",
            "-client=127.0.0.1",
            "-client=127.0.0.1 [::1]",
            "-retry-join=a",
            "-retry-join=b",
        ])
        .command
        else {
            panic!("not the agent command");
        };
        let want: Vec<std::net::IpAddr> =
            vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(a.client.unwrap().0, want);
        assert_eq!(a.retry_join, ["a", "b"]);
    }
}
