//! Building resource records and fitting an answer into a UDP or TCP message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::Request;

use crate::config::DnsConfig;

/// What a question is answered with, before it is fitted to the transport.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
    /// SRV answers keep their targets' records in Additional in step when trimmed.
    pub srv: bool,
    pub authoritative: bool,
    pub recursion_available: bool,
    /// Upstream said the answer was truncated (recursion).
    pub truncated: bool,
}

impl Answer {
    pub(crate) fn code(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            srv: false,
            authoritative: true,
            recursion_available: false,
            truncated: false,
        }
    }
}

/// An A or AAAA record for `addr` when it is an IP of the asked family; a CNAME when the
/// address is a hostname; nothing otherwise. `ANY` and `TXT` accept both families (Consul
/// answers TXT questions about services with addresses).
pub(crate) fn address(owner: &Name, addr: &str, qtype: RecordType, ttl: u32) -> Vec<Record> {
    let family_ok = |v4: bool| match qtype {
        RecordType::A => v4,
        RecordType::AAAA => !v4,
        RecordType::ANY | RecordType::TXT => true,
        _ => false,
    };
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if family_ok(true) => {
            vec![Record::from_rdata(owner.clone(), ttl, RData::A(A(ip)))]
        }
        Ok(IpAddr::V6(ip)) if family_ok(false) => {
            vec![Record::from_rdata(
                owner.clone(),
                ttl,
                RData::AAAA(AAAA(ip)),
            )]
        }
        Ok(_) => Vec::new(),
        Err(_) if addr.is_empty() => Vec::new(),
        Err(_) => match Name::from_ascii(format!("{}.", addr.trim_end_matches('.'))) {
            Ok(target) if family_ok(true) || family_ok(false) => vec![Record::from_rdata(
                owner.clone(),
                ttl,
                RData::CNAME(CNAME(target)),
            )],
            _ => Vec::new(),
        },
    }
}

/// Node metadata as TXT records: `key=value` escaped per RFC 1464, or just the value for
/// `rfc1035-` keys.
pub(crate) fn node_meta_txt(
    owner: &Name,
    meta: &BTreeMap<String, String>,
    ttl: u32,
) -> Vec<Record> {
    meta.iter()
        .map(|(k, v)| {
            let text = if k.to_ascii_lowercase().starts_with("rfc1035-") {
                v.clone()
            } else {
                format!("{}={v}", rfc1464_key(k))
            };
            Record::from_rdata(owner.clone(), ttl, RData::TXT(TXT::new(vec![text])))
        })
        .collect()
}

/// Escapes a TXT attribute name: backticks and `=` get a backtick, as do leading and
/// trailing spaces.
fn rfc1464_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let last = k.chars().count().saturating_sub(1);
    for (i, c) in k.chars().enumerate() {
        let edge_space = c == ' ' && (i == 0 || i == last);
        if c == '`' || c == '=' || edge_space {
            out.push('`');
        }
        out.push(c);
    }
    out
}

pub(crate) fn srv(owner: &Name, ttl: u32, weight: u16, port: u16, target: Name) -> Record {
    Record::from_rdata(
        owner.clone(),
        ttl,
        RData::SRV(SRV::new(1, weight, port, target)),
    )
}

pub(crate) fn ns(owner: &Name, ttl: u32, target: Name) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::NS(NS(target)))
}

/// The zone's SOA: `ns.<domain>`, `hostmaster.<domain>`, the current Unix time as serial.
pub(crate) fn soa(domain: &str, c: &DnsConfig) -> Record {
    let name = |s: String| Name::from_ascii(s).unwrap_or_else(|_| Name::root());
    let serial = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    let rdata = SOA::new(
        name(format!("ns.{domain}")),
        name(format!("hostmaster.{domain}")),
        serial,
        c.soa_refresh as i32,
        c.soa_retry as i32,
        c.soa_expire as i32,
        c.soa_min_ttl,
    );
    Record::from_rdata(name(domain.to_string()), c.soa_min_ttl, RData::SOA(rdata))
}

/// Drops records identical to an earlier one.
pub(crate) fn dedupe(records: &mut Vec<Record>) {
    let mut seen = HashSet::new();
    records.retain(|r| seen.insert(r.to_string()));
}

/// Consul's caps: UDP to the client's EDNS size (else 512 bytes), TCP to 65523 bytes and
/// 4096 records (1024 for SRV).
const MAX_UDP: usize = 65_467;
const MAX_TCP: usize = 65_523;
const MAX_TCP_RECORDS: usize = 4096;
const MAX_TCP_SRV: usize = 1024;
/// Consul never answers a client without EDNS with more than this many records over UDP.
const MAX_UDP_LIMIT: usize = 8;

fn encoded_len(request: &Request, a: &Answer, edns: Option<u16>) -> usize {
    let mut m = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    m.queries = request
        .queries
        .queries()
        .iter()
        .map(|q| q.original().clone())
        .collect();
    m.answers = a.answers.clone();
    m.authorities = a.authority.clone();
    m.additionals = a.additional.clone();
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().map_or(usize::MAX, |v| v.len())
}

/// Keeps the Additional records of the remaining SRV records: each SRV record brings its
/// own copy of its target's records, as Consul's answers do, so a target named by two SRV
/// records keeps two copies and one named by none keeps none.
pub(crate) fn resync_additional(a: &mut Answer) {
    let mut srvs: HashMap<Name, usize> = HashMap::new();
    for r in &a.answers {
        if let RData::SRV(s) = &r.data {
            *srvs.entry(s.target.clone()).or_default() += 1;
        }
    }
    let mut kept: HashMap<String, usize> = HashMap::new();
    a.additional.retain(|r| {
        let allowed = srvs.get(&r.name).copied().unwrap_or(0);
        let n = kept.entry(r.to_string()).or_default();
        *n += 1;
        *n <= allowed
    });
}

pub(crate) fn trim(
    a: &mut Answer,
    request: &Request,
    client_edns: Option<u16>,
    udp: bool,
    udp_answer_limit: usize,
) -> bool {
    let before = a.answers.len();
    let (max_size, max_records) = if udp {
        let size = client_edns.map_or(512, |s| usize::from(s).clamp(512, MAX_UDP));
        let records = if client_edns.is_none() {
            udp_answer_limit.clamp(1, MAX_UDP_LIMIT)
        } else {
            usize::MAX
        };
        (size, records)
    } else {
        let records = if a.srv { MAX_TCP_SRV } else { MAX_TCP_RECORDS };
        (MAX_TCP, records)
    };
    let mut trimmed = false;
    if a.answers.len() > max_records {
        a.answers.truncate(max_records);
        trimmed = true;
    }
    if a.srv && trimmed {
        resync_additional(a);
    }
    while encoded_len(request, a, client_edns) > max_size {
        trimmed = true;
        if !a.authority.is_empty() && a.rcode == ResponseCode::NoError && !a.answers.is_empty() {
            a.authority.clear();
        } else if a.answers.len() > 1 {
            a.answers.pop();
            if a.srv {
                resync_additional(a);
            }
        } else if !a.additional.is_empty() {
            a.additional.clear();
        } else {
            break;
        }
    }
    trimmed || a.answers.len() < before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1464_escaping() {
        assert_eq!(rfc1464_key("a=b"), "a`=b");
        assert_eq!(rfc1464_key(" x "), "` x` ");
        assert_eq!(rfc1464_key("back`tick"), "back``tick");
        let owner = Name::from_ascii("n.node.dc1.consul.").unwrap();
        let meta = BTreeMap::from([
            ("rfc1035-raw".to_string(), "v=spf1".to_string()),
            ("k".to_string(), "v".to_string()),
        ]);
        let txt: Vec<String> = node_meta_txt(&owner, &meta, 0)
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(txt, ["k=v", "v=spf1"]);
    }

    #[test]
    fn address_records_by_family() {
        let owner = Name::from_ascii("web.service.consul.").unwrap();
        assert_eq!(address(&owner, "10.0.0.1", RecordType::A, 0).len(), 1);
        assert!(address(&owner, "10.0.0.1", RecordType::AAAA, 0).is_empty());
        assert_eq!(address(&owner, "::1", RecordType::AAAA, 0).len(), 1);
        assert_eq!(address(&owner, "10.0.0.1", RecordType::TXT, 0).len(), 1);
        let cname = address(&owner, "db.example.com", RecordType::A, 0);
        assert_eq!(cname[0].record_type(), RecordType::CNAME);
    }
}
