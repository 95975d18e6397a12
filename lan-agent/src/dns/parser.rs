//! DNS names under the agent's domain, parsed the way Consul's DNS server reads them:
//! labels are scanned from the right for the first kind label (`service`, `node`, `addr`,
//! `query`, ...); what is left of it names the thing, what is right of it the datacenter.

/// What a question under the domain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsQuery {
    /// `<node>.node[.<dc>]`; node names may contain dots.
    Node { node: String, dc: Option<String> },
    /// `[<tag>.]<name>.service[.<dc>]` or RFC 2782 `_<name>._<tag>[.service][.<dc>]`.
    Service {
        name: String,
        tag: Option<String>,
        dc: Option<String>,
    },
    /// `<hex>.addr[.<dc>]`: an IP address spelled in hex.
    Addr { hex: String },
    /// `<name>.query[.<dc>]` or RFC 2782 `_<name>._tcp.query[.<dc>]`: a prepared query by
    /// ID or name (names may contain dots).
    Query { name: String, dc: Option<String> },
    /// Kinds Consul has that this agent does not serve yet (`connect`, ...).
    Unsupported,
    /// Not a name Consul would answer: NXDOMAIN.
    Invalid,
}

const KINDS: &[&str] = &[
    "service", "connect", "virtual", "ingress", "node", "query", "addr",
];

/// Parses the labels left of the domain (already lower-cased, no trailing dot). `srv`
/// makes the `.service` label optional for names starting with `_`, as Consul does.
pub fn parse(labels: &[&str], srv: bool) -> DnsQuery {
    let mut split = None;
    for i in (0..labels.len()).rev() {
        if KINDS.contains(&labels[i]) {
            split = Some((labels[i], &labels[..i], &labels[i + 1..]));
            break;
        }
        if srv && labels[i].starts_with('_') {
            split = Some(("service", &labels[..=i], &labels[i + 1..]));
            break;
        }
    }
    let Some((kind, parts, suffixes)) = split else {
        return DnsQuery::Invalid;
    };
    let dc = match suffixes {
        [] => None,
        [dc] => Some((*dc).to_string()),
        [dc, "dc"] => Some((*dc).to_string()),
        _ => return DnsQuery::Invalid,
    };
    if parts.is_empty() {
        return DnsQuery::Invalid;
    }
    match kind {
        "node" => DnsQuery::Node {
            node: parts.join("."),
            dc,
        },
        "service" => parse_service(parts, dc),
        "addr" if parts.len() == 1 => DnsQuery::Addr {
            hex: parts[0].to_string(),
        },
        "addr" => DnsQuery::Invalid,
        "query" => DnsQuery::Query {
            name: match parts {
                [name, tcp] if name.starts_with('_') && tcp.starts_with('_') => {
                    name[1..].to_string()
                }
                _ => parts.join("."),
            },
            dc,
        },
        _ => DnsQuery::Unsupported,
    }
}

fn parse_service(parts: &[&str], dc: Option<String>) -> DnsQuery {
    if let [name, tag] = parts
        && let (Some(name), Some(tag)) = (name.strip_prefix('_'), tag.strip_prefix('_'))
    {
        return DnsQuery::Service {
            name: name.to_string(),
            tag: (tag != "tcp").then(|| tag.to_string()),
            dc,
        };
    }
    let (name, tags) = parts.split_last().map_or(("", &[][..]), |(n, t)| (*n, t));
    DnsQuery::Service {
        name: name.to_string(),
        tag: (!tags.is_empty()).then(|| tags.join(".")),
        dc,
    }
}

/// `7f000001` → 127.0.0.1, 32 hex digits → an IPv6 address.
pub fn hex_ip(hex: &str) -> Option<std::net::IpAddr> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    match bytes?.as_slice() {
        [a, b, c, d] => Some(std::net::IpAddr::from([*a, *b, *c, *d])),
        b if b.len() == 16 => {
            let mut arr = [0u8; 16];
            arr.copy_from_slice(b);
            Some(std::net::IpAddr::from(arr))
        }
        _ => None,
    }
}

/// The `addr` label for an IP: 8 hex digits for IPv4, 32 for IPv6.
pub fn ip_hex(ip: std::net::IpAddr) -> String {
    let octets: Vec<u8> = match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, srv: bool) -> DnsQuery {
        let labels: Vec<&str> = name.split('.').collect();
        parse(&labels, srv)
    }

    fn svc(name: &str, tag: Option<&str>, dc: Option<&str>) -> DnsQuery {
        DnsQuery::Service {
            name: name.into(),
            tag: tag.map(Into::into),
            dc: dc.map(Into::into),
        }
    }

    #[test]
    fn service_forms() {
        assert_eq!(p("web.service", false), svc("web", None, None));
        assert_eq!(
            p("rails.web.service", false),
            svc("web", Some("rails"), None)
        );
        assert_eq!(
            p("a.b.web.service.dc2", false),
            svc("web", Some("a.b"), Some("dc2"))
        );
        assert_eq!(
            p("web.service.dc2.dc", false),
            svc("web", None, Some("dc2"))
        );
        assert_eq!(
            p("_web._rails.service", true),
            svc("web", Some("rails"), None)
        );
        assert_eq!(p("_web._tcp.service", false), svc("web", None, None));
        assert_eq!(p("_web._tcp", true), svc("web", None, None));
        assert_eq!(p("_web._tcp.dc1", true), svc("web", None, Some("dc1")));
        assert_eq!(p("_web._tcp", false), DnsQuery::Invalid);
    }

    #[test]
    fn node_addr_and_invalid_forms() {
        assert_eq!(
            p("my.host.node.dc1", false),
            DnsQuery::Node {
                node: "my.host".into(),
                dc: Some("dc1".into())
            }
        );
        assert_eq!(
            p("7f000001.addr.dc1", false),
            DnsQuery::Addr {
                hex: "7f000001".into()
            }
        );
        assert_eq!(p("web", false), DnsQuery::Invalid);
        assert_eq!(p("service", false), DnsQuery::Invalid);
        assert_eq!(p("web.service.a.b.c", false), DnsQuery::Invalid);
        assert_eq!(p("web.connect", false), DnsQuery::Unsupported);
        let q = |name: &str, dc: Option<&str>| DnsQuery::Query {
            name: name.into(),
            dc: dc.map(Into::into),
        };
        assert_eq!(p("web-geo.query", false), q("web-geo", None));
        assert_eq!(p("web-geo.query.dc2", false), q("web-geo", Some("dc2")));
        assert_eq!(p("a.b.query", false), q("a.b", None));
        assert_eq!(p("_web-geo._tcp.query", true), q("web-geo", None));
        assert_eq!(p("query", false), DnsQuery::Invalid);
    }

    #[test]
    fn hex_round_trips() {
        let v4: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(ip_hex(v4), "7f000001");
        assert_eq!(hex_ip("7f000001"), Some(v4));
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(hex_ip(&ip_hex(v6)), Some(v6));
        assert_eq!(hex_ip("zz000001"), None);
        assert_eq!(hex_ip("7f00"), None);
    }
}
