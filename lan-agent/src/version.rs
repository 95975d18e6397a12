//! Build identity, as `cairn version` and `/v1/agent/self` report it.

/// The release version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision, when the build sets `CAIRN_GIT_REVISION`.
pub const REVISION: &str = match option_env!("CAIRN_GIT_REVISION") {
    Some(r) => r,
    None => "",
};
/// The build date (RFC 3339), when the build sets `CAIRN_BUILD_DATE`.
pub const BUILD_DATE: &str = match option_env!("CAIRN_BUILD_DATE") {
    Some(d) => d,
    None => "",
};
/// Consul's gossip protocol range that `cairn version` prints, for tools that parse it.
pub const PROTOCOL_LINE: &str = "Protocol 2 spoken by default, understands 2 to 3 (agent will automatically use protocol >2 when speaking to compatible agents)";
