//! The selectors each filtered list allows, as go-bexpr derives them from the Go struct
//! Consul filters that list as, so a filter naming a field the type lacks is refused with
//! go-bexpr's `Selector "X" is not valid` instead of quietly matching nothing.
//!
//! Specs are whitespace-separated dotted paths; `*` stands for any map key. Embedded
//! `RaftIndex` is a selector of its own in go-bexpr (`RaftIndex.CreateIndex`); the
//! evaluator looks through it because the JSON flattens it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

/// A tree of valid selector segments.
#[derive(Debug, Default)]
pub struct Fields {
    children: BTreeMap<String, Fields>,
}

impl Fields {
    /// Builds a tree from `(prefix, spec)` parts; each path of a spec goes under its prefix.
    fn build(parts: &[(&str, &str)]) -> Self {
        let mut root = Fields::default();
        for (prefix, spec) in parts {
            for path in spec.split_whitespace() {
                let mut at = &mut root;
                for seg in prefix.split('.').filter(|s| !s.is_empty()) {
                    at = at.children.entry(seg.to_string()).or_default();
                }
                for seg in path.split('.') {
                    at = at.children.entry(seg.to_string()).or_default();
                }
            }
        }
        root
    }

    /// The first prefix of `selector` that names no field, joined with dots.
    pub(super) fn invalid_prefix(&self, selector: &[String]) -> Option<String> {
        let mut at = self;
        for (i, seg) in selector.iter().enumerate() {
            match at.children.get(seg).or_else(|| at.children.get("*")) {
                Some(next) => at = next,
                None => return Some(selector[..=i].join(".")),
            }
        }
        None
    }
}

const RAFT_INDEX: &str = "RaftIndex.CreateIndex RaftIndex.ModifyIndex";
const LOCALITY: &str = "Locality.Region Locality.Zone";

/// `structs.Node`.
const NODE: &str = "ID Node Address Datacenter Partition PeerName TaggedAddresses.* Meta.*";

/// `structs.ConnectProxyConfig`.
const PROXY: &str = "DestinationServiceName DestinationServiceID LocalServiceAddress \
    LocalServicePort LocalServiceSocketPath Mode Config TransparentProxy.OutboundListenerPort \
    TransparentProxy.DialedDirectly MeshGateway.Mode Expose.Checks Expose.Paths.ListenerPort \
    Expose.Paths.Path Expose.Paths.LocalPathPort Expose.Paths.Protocol \
    Expose.Paths.ParsedFromCheck Upstreams.DestinationType Upstreams.DestinationNamespace \
    Upstreams.DestinationPartition Upstreams.DestinationPeer Upstreams.DestinationName \
    Upstreams.Datacenter Upstreams.LocalBindAddress Upstreams.LocalBindPort \
    Upstreams.LocalBindSocketPath Upstreams.LocalBindSocketMode Upstreams.Config \
    Upstreams.MeshGateway.Mode Upstreams.CentrallyConfigured";

/// `structs.NodeService`, without its proxy.
const NODE_SERVICE: &str = "Kind ID Service Tags Address TaggedAddresses.*.Address \
    TaggedAddresses.*.Port Meta.* Port SocketPath Weights.Passing Weights.Warning \
    EnableTagOverride Connect.Native Connect.SidecarService PeerName LocallyRegisteredAsSidecar";

/// `structs.ServiceNode`, without its proxy.
const SERVICE_NODE: &str = "ID Node Address Datacenter TaggedAddresses.* NodeMeta.* \
    ServiceKind ServiceID ServiceName ServiceTags ServiceAddress \
    ServiceTaggedAddresses.*.Address ServiceTaggedAddresses.*.Port ServiceWeights.Passing \
    ServiceWeights.Warning ServiceMeta.* ServicePort ServiceSocketPath \
    ServiceEnableTagOverride ServiceConnect.Native ServiceConnect.SidecarService \
    ServiceLocality.Region ServiceLocality.Zone PeerName";

/// `structs.HealthCheck`, without its definition.
const HEALTH_CHECK: &str = "Node CheckID Name Status Notes Output ServiceID ServiceName \
    ServiceTags Type Interval Timeout ExposedPort PeerName";

/// `structs.HealthCheckDefinition`.
const CHECK_DEFINITION: &str = "HTTP TLSServerName TLSSkipVerify Header.* Method Body \
    DisableRedirects TCP TCPUseTLS UDP H2PING H2PingUseTLS OSService GRPC GRPCUseTLS \
    IntervalDuration TimeoutDuration DeregisterCriticalServiceAfterDuration ScriptArgs \
    DockerContainerID Shell";

/// `api.AgentService` (its `bexpr:"-"` fields left out).
const AGENT_SERVICE: &str = "Kind ID Service Tags Meta.* Port Address TaggedAddresses.*.Address \
    TaggedAddresses.*.Port Weights.Passing Weights.Warning EnableTagOverride Connect.Native \
    Connect.SidecarService PeerName";

/// `serf.Member`.
const MEMBER: &str = "Name Addr Port Tags.* Status ProtocolMin ProtocolMax ProtocolCur \
    DelegateMin DelegateMax DelegateCur";

/// `/v1/catalog/nodes`.
pub static NODES: LazyLock<Fields> =
    LazyLock::new(|| Fields::build(&[("", NODE), ("", LOCALITY), ("", RAFT_INDEX)]));

/// `/v1/catalog/service/:s` and `/v1/catalog/services`.
pub static SERVICE_NODES: LazyLock<Fields> = LazyLock::new(|| {
    Fields::build(&[
        ("", SERVICE_NODE),
        ("ServiceProxy", PROXY),
        ("", RAFT_INDEX),
    ])
});

/// `/v1/catalog/node/:n` and `/v1/catalog/node-services/:n`.
pub static NODE_SERVICES: LazyLock<Fields> = LazyLock::new(|| {
    Fields::build(&[
        ("", NODE_SERVICE),
        ("Proxy", PROXY),
        ("", LOCALITY),
        ("", RAFT_INDEX),
    ])
});

/// `/v1/health/{node,checks,state}` and `/v1/agent/checks`.
pub static CHECKS: LazyLock<Fields> = LazyLock::new(|| {
    Fields::build(&[
        ("", HEALTH_CHECK),
        ("Definition", CHECK_DEFINITION),
        ("", RAFT_INDEX),
    ])
});

/// `/v1/health/service/:s`: `structs.CheckServiceNode`.
pub static SERVICE_HEALTH: LazyLock<Fields> = LazyLock::new(|| {
    Fields::build(&[
        ("Node", NODE),
        ("Node", LOCALITY),
        ("Node", RAFT_INDEX),
        ("Service", NODE_SERVICE),
        ("Service.Proxy", PROXY),
        ("Service", LOCALITY),
        ("Service", RAFT_INDEX),
        ("Checks", HEALTH_CHECK),
        ("Checks.Definition", CHECK_DEFINITION),
        ("Checks", RAFT_INDEX),
    ])
});

/// `/v1/agent/services`.
pub static AGENT_SERVICES: LazyLock<Fields> =
    LazyLock::new(|| Fields::build(&[("", AGENT_SERVICE), ("Proxy", PROXY)]));

/// `/v1/catalog/gateway-services/:gateway`: `structs.GatewayService`.
pub static GATEWAY_SERVICES: LazyLock<Fields> = LazyLock::new(|| {
    Fields::build(&[
        (
            "",
            "Gateway.Name Service.Name GatewayKind Port Protocol Hosts CAFile CertFile KeyFile \
             SNI FromWildcard",
        ),
        ("", RAFT_INDEX),
    ])
});

/// `/v1/agent/members`.
pub static MEMBERS: LazyLock<Fields> = LazyLock::new(|| Fields::build(&[("", MEMBER)]));

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Vec<String> {
        s.split('.').map(str::to_string).collect()
    }

    #[test]
    fn selectors_are_checked_against_the_type() {
        assert_eq!(SERVICE_NODES.invalid_prefix(&sel("ServiceName")), None);
        assert_eq!(SERVICE_NODES.invalid_prefix(&sel("ServiceMeta.env")), None);
        assert_eq!(
            SERVICE_NODES.invalid_prefix(&sel("ServiceMeta.env.x")),
            Some("ServiceMeta.env.x".into())
        );
        assert_eq!(
            SERVICE_NODES.invalid_prefix(&sel("Service")),
            Some("Service".into())
        );
        assert_eq!(SERVICE_HEALTH.invalid_prefix(&sel("Checks.Status")), None);
        assert_eq!(
            SERVICE_HEALTH.invalid_prefix(&sel("Checks.Nope.Deeper")),
            Some("Checks.Nope".into())
        );
        assert_eq!(
            SERVICE_HEALTH.invalid_prefix(&sel("Service.Proxy.Upstreams.DestinationName")),
            None
        );
        assert_eq!(NODES.invalid_prefix(&sel("RaftIndex.ModifyIndex")), None);
        assert_eq!(
            NODES.invalid_prefix(&sel("ModifyIndex")),
            Some("ModifyIndex".into())
        );
    }
}
