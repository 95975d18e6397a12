//! How long each side of an RPC waits, defined once for agents, servers and routers.

use std::time::Duration;

/// Consul's `rpc_hold_timeout`: how long a request keeps trying (another server, a new
/// leader, another router) before it fails.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(7);
/// Consul's `default_query_time`: how long a blocking query waits without `?wait`.
pub const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);
/// Consul's `max_query_time`: the cap on `?wait`.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
/// Consul's blocking-query jitter: up to wait/16 is added.
pub const JITTER_FRACTION: u32 = 16;
/// Extra time a read may take over its wait (and jitter) before the caller gives up.
pub const READ_MARGIN: Duration = Duration::from_secs(15);
/// How long a write may take, forwarding and Raft commit included.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait for the answer to a read that blocks for up to `wait` (the server's
/// default query time when `None`): the wait, its jitter and a margin.
pub fn read_timeout(wait: Option<Duration>) -> Duration {
    let wait = wait.unwrap_or(DEFAULT_QUERY_TIME).min(MAX_QUERY_TIME);
    wait + wait / JITTER_FRACTION + READ_MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_timeouts_cover_the_wait_and_its_jitter() {
        let t = read_timeout(Some(Duration::from_secs(160)));
        assert_eq!(t, Duration::from_secs(160 + 10 + 15));
        assert_eq!(read_timeout(None), read_timeout(Some(DEFAULT_QUERY_TIME)));
        assert_eq!(
            read_timeout(Some(Duration::from_secs(3600))),
            read_timeout(Some(MAX_QUERY_TIME))
        );
    }
}
