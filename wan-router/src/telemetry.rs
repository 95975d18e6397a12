//! The router's metric names (Prometheus style, served on `/metrics`) and logging setup.

/// Metric names.
pub mod names {
    /// Requests forwarded to another datacenter, by `dc` and `outcome`
    /// (`ok`, `error`, `no_server`, `unknown_dc`).
    pub const FORWARDS: &str = "router_forward_requests_total";
    /// Seconds a forwarded request took, by `dc`.
    pub const FORWARD_SECONDS: &str = "router_forward_seconds";
    /// Attempts beyond the first (another server or router tried), by `dc`.
    pub const RETRIES: &str = "router_forward_retries_total";
    /// Requests from other datacenters relayed to a local server, by `outcome`.
    pub const RELAYED: &str = "router_relayed_requests_total";
    /// TLS handshakes refused, by `side` (`accept`: a peer dialled us; `dial`).
    pub const REJECTED_HANDSHAKES: &str = "router_rejected_handshakes_total";
    /// Datagrams and streams dropped as malformed, late or over a limit.
    pub const BAD_PACKETS: &str = "router_bad_packets_total";
    /// WAN members by `state` (`alive`, `failed`, `left`, `leaving`).
    pub const WAN_MEMBERS: &str = "router_wan_members";
    /// Estimated round trip to each datacenter, by `dc`.
    pub const DC_RTT_SECONDS: &str = "router_datacenter_rtt_seconds";
    /// Whether the server this router fronts is alive in the LAN pool (1 or 0).
    pub const SERVER_ALIVE: &str = "router_fronted_server_alive";
}

/// Logs to stderr at `level` (`RUST_LOG` wins), as text or JSON lines.
pub fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "cairn_wan_router={level},cairn_shared={level},warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
