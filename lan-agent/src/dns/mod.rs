//! The DNS interface on `:8600` (UDP and TCP), answering Consul's names under the agent's
//! domain from the catalog: nodes, services (with tags and RFC 2782 SRV names), `addr`, SOA
//! and NS; names outside the domain go to the configured recursors.
//!
//! Answers follow Consul's rules: critical instances are dropped (warning ones too with
//! `only_passing`), instances are shuffled, a known name without records of the asked type
//! is NOERROR with the SOA (NODATA) while an unknown one is NXDOMAIN with the SOA, and UDP
//! answers are trimmed to fit (`udp_answer_limit` for clients without EDNS), setting TC only
//! with `enable_truncate`. Reads are stale by default (`allow_stale`), as Consul's DNS.
//!
//! hickory's server parses packets: fewer than 12 bytes are dropped, unparseable ones get
//! FORMERR, responses are ignored; anything that parses reaches [`ConsulDns`].

mod cache;
pub mod parser;
mod records;
mod recursor;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_shared::api::{CheckStatus, QuerySource, ServiceEntry};
use cairn_shared::rpc::{
    Consistency, ErrorKind, Query, QueryOptions, QueryResult, ReadRequest, RpcError,
};
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DnsConfig;
use crate::server::Rpc;
use parser::DnsQuery;
use records::Answer;

/// What the DNS server needs to know about its agent.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// The domain, lower-case with the trailing dot (`consul.`).
    pub domain: String,
    pub datacenter: String,
    /// This agent's node name: prepared queries sort near it for `Near: _agent`.
    pub node: String,
    pub config: DnsConfig,
    pub recursors: Vec<SocketAddr>,
    /// DNS carries no token: lookups act as the agent's default token.
    pub acl: Arc<crate::acl::AgentAcl>,
}

/// The request handler.
#[derive(Debug, Clone)]
pub struct ConsulDns {
    rpc: Arc<dyn Rpc>,
    settings: Arc<DnsSettings>,
    cache: Arc<cache::AnswerCache>,
}

/// How long a TCP client may idle between queries.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds UDP and TCP on `addr` and serves until `shutdown`. Returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    rpc: Arc<dyn Rpc>,
    settings: DnsSettings,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let bound = udp.local_addr()?;
    // TCP on the same port UDP got, so a port-0 bind still gives one port for both.
    let tcp = tokio::net::TcpListener::bind(bound).await?;
    let handler = ConsulDns {
        rpc,
        settings: Arc::new(settings),
        cache: Arc::default(),
    };
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT, 64);
    tasks.spawn(async move {
        shutdown.cancelled().await;
        if let Err(e) = server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "DNS server stopped with an error");
        }
    });
    Ok(bound)
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait]
impl RequestHandler for ConsulDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        metrics::counter!("cairn_dns_queries_total").increment(1);
        let udp = request.protocol() == Protocol::Udp;
        let answer = match request.request_info() {
            // Zero or several questions: Consul's DNS library answers FORMERR.
            Err(_) => Answer::code(ResponseCode::FormErr),
            Ok(_) if request.metadata.op_code != OpCode::Query => {
                Answer::code(ResponseCode::NotImp)
            }
            Ok(info) => {
                let qname = info.query.original().name().clone();
                let name = qname.to_ascii().to_ascii_lowercase();
                let qtype = info.query.query_type();
                match self.labels_under_domain(&name) {
                    Some(labels) => {
                        self.answer(&labels, qtype, &qname, client_ip(request))
                            .await
                    }
                    None if self.settings.recursors.is_empty() => {
                        let mut a = Answer::code(ResponseCode::Refused);
                        a.authoritative = false;
                        a
                    }
                    None => recursor::forward(request, &self.settings).await,
                }
            }
        };
        // Sending fails only if encoding does, which trimming prevents: report SERVFAIL.
        self.send(request, response, answer, udp)
            .await
            .unwrap_or_else(|| failed(request, ResponseCode::ServFail))
    }
}

impl ConsulDns {
    /// The labels left of the domain, or `None` for a name outside it.
    fn labels_under_domain(&self, name: &str) -> Option<Vec<String>> {
        let domain = &self.settings.domain;
        if name == domain.as_str() {
            return Some(Vec::new());
        }
        let rest = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
        Some(rest.split('.').map(str::to_string).collect())
    }

    fn options(&self, dc: Option<&str>) -> QueryOptions {
        QueryOptions {
            datacenter: dc.unwrap_or_default().to_string(),
            consistency: if self.settings.config.allow_stale {
                Consistency::Stale
            } else {
                Consistency::Default
            },
            token: self.settings.acl.default_token(),
            ..QueryOptions::default()
        }
    }

    async fn read(&self, query: Query, dc: Option<&str>) -> Result<QueryResult, RpcError> {
        self.read_indexed(query, dc).await.map(|(_, r)| r)
    }

    /// A read and the catalog index it answered at.
    async fn read_indexed(
        &self,
        query: Query,
        dc: Option<&str>,
    ) -> Result<(u64, QueryResult), RpcError> {
        let req = ReadRequest {
            query,
            options: self.options(dc),
        };
        self.rpc.read(req).await.map(|r| (r.meta.index, r.result))
    }

    /// An RPC failure as Consul maps it: unknown datacenter is NXDOMAIN, anything else
    /// SERVFAIL.
    fn rpc_failure(&self, e: &RpcError) -> Answer {
        if e.kind == ErrorKind::UnknownDatacenter {
            self.nxdomain()
        } else {
            tracing::warn!(error = %e, "DNS lookup failed");
            Answer::code(ResponseCode::ServFail)
        }
    }

    fn nxdomain(&self) -> Answer {
        let mut a = Answer::code(ResponseCode::NXDomain);
        a.authority.push(self.soa());
        a
    }

    fn nodata(&self) -> Answer {
        let mut a = Answer::code(ResponseCode::NoError);
        a.authority.push(self.soa());
        a
    }

    /// Answers a question under the domain; records are owned by the question's name.
    async fn answer(
        &self,
        labels: &[String],
        qtype: RecordType,
        owner: &Name,
        source_ip: IpAddr,
    ) -> Answer {
        match qtype {
            RecordType::AXFR | RecordType::IXFR => return Answer::code(ResponseCode::NotImp),
            RecordType::SOA => return self.soa_answer().await,
            RecordType::NS => return self.ns_answer().await,
            _ => {}
        }
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        match parser::parse(&refs, qtype == RecordType::SRV) {
            DnsQuery::Node { node, dc } => {
                self.node_answer(&node, dc.as_deref(), qtype, owner).await
            }
            DnsQuery::Service { name, tag, dc } => {
                self.service_answer(&name, tag, dc.as_deref(), qtype, owner)
                    .await
            }
            DnsQuery::Addr { hex } => self.addr_answer(&hex, qtype, owner),
            DnsQuery::Query { name, dc } => {
                self.query_answer(&name, dc.as_deref(), qtype, owner, source_ip)
                    .await
            }
            DnsQuery::Unsupported | DnsQuery::Invalid => self.nxdomain(),
        }
    }

    fn qname(&self, labels_and_kind: &str) -> Name {
        Name::from_ascii(format!("{labels_and_kind}.{}", self.settings.domain))
            .unwrap_or_else(|_| Name::root())
    }

    /// `<node>.node.<dc>.<domain>`, the name SRV targets and NS records use.
    fn node_name(&self, node: &str, dc: &str) -> Name {
        self.qname(&format!("{}.node.{dc}", node.to_ascii_lowercase()))
    }

    async fn node_answer(
        &self,
        node: &str,
        dc: Option<&str>,
        qtype: RecordType,
        owner: &Name,
    ) -> Answer {
        // Consul answers other types for node names with an empty NOERROR, before looking.
        if !matches!(
            qtype,
            RecordType::A | RecordType::AAAA | RecordType::ANY | RecordType::TXT
        ) {
            return Answer::code(ResponseCode::NoError);
        }
        let found = match self
            .read(
                Query::CatalogNode {
                    node: node.to_string(),
                    select: Default::default(),
                },
                dc,
            )
            .await
        {
            Ok(QueryResult::NodeServices(n)) => n,
            Ok(_) => None,
            Err(e) => return self.rpc_failure(&e),
        };
        let Some(found) = found else {
            return self.nxdomain();
        };
        let ttl = ttl_secs(self.settings.config.node_ttl);
        let mut a = Answer::code(ResponseCode::NoError);
        if matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
            a.answers
                .extend(records::address(owner, &found.node.address, qtype, ttl));
        }
        let meta = records::node_meta_txt(owner, &found.node.meta, ttl);
        match qtype {
            RecordType::TXT | RecordType::ANY => a.answers.extend(meta),
            _ if self.settings.config.enable_additional_node_meta_txt => a.additional.extend(meta),
            _ => {}
        }
        a
    }

    fn health_query(name: &str, tag: Option<String>) -> Query {
        Query::HealthService {
            service: name.to_string(),
            passing: false,
            select: cairn_shared::rpc::Select {
                tags: tag.into_iter().collect(),
                ..Default::default()
            },
        }
    }

    /// The instances DNS may hand out (Consul drops critical ones, and warning ones with
    /// `only_passing`), in catalog order, and the index they were read at.
    async fn healthy(
        &self,
        query: Query,
        dc: Option<&str>,
    ) -> Result<(u64, Vec<ServiceEntry>), RpcError> {
        let (index, result) = self.read_indexed(query, dc).await?;
        let QueryResult::ServiceEntries(entries) = result else {
            return Ok((index, Vec::new()));
        };
        let only_passing = self.settings.config.only_passing;
        let healthy: Vec<ServiceEntry> = entries
            .into_iter()
            .filter(|e| {
                e.checks.iter().all(|c| match c.status {
                    CheckStatus::Critical => false,
                    CheckStatus::Warning => !only_passing,
                    CheckStatus::Passing => true,
                })
            })
            .collect();
        Ok((index, healthy))
    }

    /// A service's instances, shuffled per query as Consul's are. The answer before the
    /// shuffle comes from the cache while the service's catalog index is unchanged.
    async fn service_answer(
        &self,
        name: &str,
        tag: Option<String>,
        dc: Option<&str>,
        qtype: RecordType,
        owner: &Name,
    ) -> Answer {
        let query = Self::health_query(name, tag);
        let key = cache::Key::new(owner, qtype);
        // An ACL change moves no catalog index, so with ACLs on nothing is cached.
        let current = if self.settings.config.allow_stale && !self.settings.acl.enabled() {
            self.rpc.local_index(&query, dc.unwrap_or_default())
        } else {
            None
        };
        let mut answer = match current.and_then(|i| self.cache.get(&key, i)) {
            Some(a) => a,
            None => {
                let (index, entries) = match self.healthy(query, dc).await {
                    Ok(v) => v,
                    Err(e) => return self.rpc_failure(&e),
                };
                let a = if entries.is_empty() {
                    self.nxdomain()
                } else {
                    let dc_name = dc.unwrap_or(&self.settings.datacenter);
                    let ttl = ttl_secs(self.settings.config.service_ttl(name));
                    self.instances_answer(&entries, dc_name, ttl, qtype, owner)
                };
                if current.is_some() {
                    self.cache.put(key, index, a.clone());
                }
                a
            }
        };
        answer.answers.shuffle(&mut rand::rng());
        self.limited(answer)
    }

    /// A prepared query's instances, in the order the server sorted them.
    async fn query_answer(
        &self,
        name: &str,
        dc: Option<&str>,
        qtype: RecordType,
        owner: &Name,
        source_ip: IpAddr,
    ) -> Answer {
        let query = Query::PreparedQueryExecute {
            id_or_name: name.to_string(),
            limit: 0,
            agent: QuerySource {
                node: self.settings.node.clone(),
                datacenter: self.settings.datacenter.clone(),
                segment: String::new(),
            },
            source_ip: Some(source_ip.to_string()),
        };
        let resp = match self.read(query, dc).await {
            Ok(QueryResult::PreparedQueryExecute(r)) => r,
            Ok(_) => return Answer::code(ResponseCode::ServFail),
            Err(e) if e.kind == ErrorKind::NotFound => return self.nxdomain(),
            Err(e) => return self.rpc_failure(&e),
        };
        if resp.nodes.is_empty() {
            return self.nxdomain();
        }
        // The query's own TTL, else the one configured for its service.
        let ttl = match cairn_shared::duration::parse(&resp.dns.ttl) {
            Ok(d) if !resp.dns.ttl.is_empty() => d,
            _ => self.settings.config.service_ttl(&resp.service),
        };
        let a = self.instances_answer(&resp.nodes, &resp.datacenter, ttl_secs(ttl), qtype, owner);
        self.limited(a)
    }

    /// A/AAAA or SRV records for instances of datacenter `dc`.
    fn instances_answer(
        &self,
        entries: &[ServiceEntry],
        dc: &str,
        ttl: u32,
        qtype: RecordType,
        owner: &Name,
    ) -> Answer {
        let mut a = Answer::code(ResponseCode::NoError);
        if qtype == RecordType::SRV {
            a.srv = true;
            for e in entries {
                let (target, extra) = self.srv_target(e, dc, ttl);
                let weight = match e.aggregate_status() {
                    CheckStatus::Warning => e.service.weights.warning,
                    _ => e.service.weights.passing,
                };
                a.answers.push(records::srv(
                    owner,
                    ttl,
                    weight.clamp(0, 65535) as u16,
                    e.service.port,
                    target,
                ));
                a.additional.extend(extra);
            }
            // One set of Additional records per SRV record, duplicates included: resolvers
            // (HAProxy's among them) pair each SRV record with its own address record.
            records::dedupe(&mut a.answers);
            records::resync_additional(&mut a);
            return a;
        }
        for e in entries {
            let addr = if e.service.address.is_empty() {
                &e.node.address
            } else {
                &e.service.address
            };
            a.answers.extend(records::address(owner, addr, qtype, ttl));
        }
        records::dedupe(&mut a.answers);
        if a.answers.is_empty() {
            return self.nodata();
        }
        a
    }

    /// `a_record_limit`: at most that many address records (after the shuffle).
    fn limited(&self, mut a: Answer) -> Answer {
        let limit = self.settings.config.a_record_limit;
        if !a.srv && limit > 0 {
            a.answers.truncate(limit);
        }
        a
    }

    /// The SRV target for an instance and the records that resolve it: the node's name
    /// when the service has no address of its own, else `<hex-ip>.addr.<dc>.<domain>`.
    fn srv_target(&self, e: &ServiceEntry, dc: &str, ttl: u32) -> (Name, Vec<Record>) {
        let svc_ip = e.service.address.parse::<IpAddr>().ok();
        let (target, addr) = match svc_ip {
            Some(ip) => (
                self.qname(&format!("{}.addr.{dc}", parser::ip_hex(ip))),
                e.service.address.clone(),
            ),
            None if e.service.address.is_empty() => {
                (self.node_name(&e.node.node, dc), e.node.address.clone())
            }
            // A hostname: point at it; resolving it is the client's job.
            None => (
                Name::from_ascii(format!("{}.", e.service.address.trim_end_matches('.')))
                    .unwrap_or_else(|_| Name::root()),
                String::new(),
            ),
        };
        let mut extra = records::address(&target, &addr, RecordType::ANY, ttl);
        if svc_ip.is_none()
            && e.service.address.is_empty()
            && self.settings.config.enable_additional_node_meta_txt
        {
            extra.extend(records::node_meta_txt(&target, &e.node.meta, ttl));
        }
        (target, extra)
    }

    fn addr_answer(&self, hex: &str, qtype: RecordType, owner: &Name) -> Answer {
        let Some(ip) = parser::hex_ip(hex) else {
            return if hex.len() == 8 || hex.len() == 32 {
                self.nxdomain()
            } else {
                Answer::code(ResponseCode::NoError)
            };
        };
        let ttl = ttl_secs(self.settings.config.node_ttl);
        let mut a = Answer::code(ResponseCode::NoError);
        let rec = records::address(owner, &ip.to_string(), RecordType::ANY, ttl);
        let wanted = matches!(
            (ip, qtype),
            (IpAddr::V4(_), RecordType::A | RecordType::ANY)
                | (IpAddr::V6(_), RecordType::AAAA | RecordType::ANY)
        );
        if wanted {
            a.answers.extend(rec);
        } else {
            a.additional.extend(rec);
        }
        a
    }

    fn soa(&self) -> Record {
        let c = &self.settings.config;
        records::soa(&self.settings.domain, c)
    }

    /// Up to three random live servers as NS records, with their addresses as glue.
    async fn nameservers(&self) -> (Vec<Record>, Vec<Record>) {
        let (_, mut servers) = self
            .healthy(Self::health_query("consul", None), None)
            .await
            .unwrap_or_default();
        servers.shuffle(&mut rand::rng());
        let domain = Name::from_ascii(&self.settings.domain).unwrap_or_else(|_| Name::root());
        let ttl = ttl_secs(self.settings.config.node_ttl);
        let mut ns = Vec::new();
        let mut glue = Vec::new();
        for e in servers.iter().take(3) {
            let target = self.node_name(&e.node.node, &self.settings.datacenter);
            ns.push(records::ns(&domain, ttl, target.clone()));
            glue.extend(records::address(
                &target,
                &e.node.address,
                RecordType::ANY,
                ttl,
            ));
        }
        (ns, glue)
    }

    async fn soa_answer(&self) -> Answer {
        let (ns, glue) = self.nameservers().await;
        let mut a = Answer::code(ResponseCode::NoError);
        a.answers.push(self.soa());
        a.authority = ns;
        a.additional = glue;
        a
    }

    async fn ns_answer(&self) -> Answer {
        let (ns, glue) = self.nameservers().await;
        let mut a = Answer::code(ResponseCode::NoError);
        a.answers = ns;
        a.additional = glue;
        a
    }

    /// Trims the answer to what the transport carries and sends it.
    async fn send<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
        mut answer: Answer,
        udp: bool,
    ) -> Option<ResponseInfo> {
        let req_edns = request.edns.as_ref();
        let mut edns = Edns::new();
        if let Some(e) = req_edns {
            edns.set_max_payload(e.max_payload().max(512));
            edns.set_version(0);
        }
        let trimmed = records::trim(
            &mut answer,
            request,
            req_edns.map(|e| e.max_payload()),
            udp,
            self.settings.config.udp_answer_limit,
        );
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.recursion_available =
            answer.recursion_available || !self.settings.recursors.is_empty();
        metadata.response_code = answer.rcode;
        metadata.truncation = answer.truncated || (trimmed && self.settings.config.enable_truncate);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if req_edns.is_some() {
            builder.edns(&edns);
        }
        let msg = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authority.iter(),
            std::iter::empty(),
            answer.additional.iter(),
        );
        response.send_response(msg).await.ok()
    }
}

/// The asker's address for `Near: _ip`: the EDNS client subnet when the query carries
/// one, else the packet's source.
fn client_ip(request: &Request) -> IpAddr {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    request
        .edns
        .as_ref()
        .and_then(|e| e.option(EdnsCode::Subnet))
        .and_then(|o| match o {
            EdnsOption::Subnet(s) => Some(s.addr()),
            _ => None,
        })
        .unwrap_or_else(|| request.src().ip())
}

/// TTLs are whole seconds.
fn ttl_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}
