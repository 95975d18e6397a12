//! `cairn acl bootstrap|token|policy|role ...`: Consul's ACL commands over `/v1/acl`, with
//! its flags (`-policy-name`, `-service-identity web:dc1`, `-rules @file.hcl`, `-id` as a
//! unique prefix) and its pretty output, or the API's JSON with `-format=json`; and
//! `cairn login` / `cairn logout` (`/v1/acl/login`, `/v1/acl/logout`).

use anyhow::{Context, bail};
use clap::{ArgAction, Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Create the first management token (once)
    Bootstrap(Common),
    /// Create, list, read, update, clone and delete tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create, list, read, update and delete policies
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create, list, read, update and delete roles
    #[command(subcommand)]
    Role(RoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    Create(TokenArgs),
    List(Common),
    Read(TokenReadArgs),
    Update(TokenArgs),
    Clone(TokenCloneArgs),
    Delete(IdArgs),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    Create(PolicyArgs),
    List(Common),
    Read(NamedArgs),
    Update(PolicyArgs),
    Delete(NamedArgs),
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    Create(RoleArgs),
    List(Common),
    Read(NamedArgs),
    Update(RoleArgs),
    Delete(NamedArgs),
}

/// The agent flags and the output format.
#[derive(Debug, Args)]
pub struct Common {
    #[command(flatten)]
    http: HttpFlags,
    /// Output format: pretty or json
    #[arg(long, default_value = "pretty")]
    format: String,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    common: Common,
    /// The ID, or a unique prefix of it
    #[arg(long, default_value = "")]
    id: String,
}

#[derive(Debug, Args)]
pub struct NamedArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "")]
    id: String,
    #[arg(long, default_value = "")]
    name: String,
}

/// Links to policies and roles and identities, as token and role commands take them.
#[derive(Debug, Args)]
pub struct Links {
    /// A policy by name (repeatable; on update, replaces the token's policies)
    #[arg(long = "policy-name", action = ArgAction::Append)]
    policy_name: Vec<String>,
    #[arg(long = "policy-id", action = ArgAction::Append)]
    policy_id: Vec<String>,
    /// On update, adds a policy by name to those the token has
    #[arg(long = "append-policy-name", action = ArgAction::Append)]
    append_policy_name: Vec<String>,
    #[arg(long = "append-policy-id", action = ArgAction::Append)]
    append_policy_id: Vec<String>,
    /// A service identity, `NAME` or `NAME:DC1,DC2` (repeatable)
    #[arg(long = "service-identity", action = ArgAction::Append)]
    service_identity: Vec<String>,
    /// A node identity, `NODE:DC` (repeatable)
    #[arg(long = "node-identity", action = ArgAction::Append)]
    node_identity: Vec<String>,
    /// A built-in templated policy, e.g. `builtin/service` (repeatable)
    #[arg(long = "templated-policy", action = ArgAction::Append)]
    templated_policy: Vec<String>,
    /// The templated policies' variable, `name:VALUE`
    #[arg(long = "var")]
    var: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    common: Common,
    /// (update) The token's accessor ID, or a unique prefix of it
    #[arg(long, default_value = "")]
    id: String,
    /// (create) The accessor ID to give the token
    #[arg(long, default_value = "")]
    accessor: String,
    /// (create) The secret ID to give the token
    #[arg(long, default_value = "")]
    secret: String,
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    links: Links,
    #[arg(long = "role-name", action = ArgAction::Append)]
    role_name: Vec<String>,
    #[arg(long = "role-id", action = ArgAction::Append)]
    role_id: Vec<String>,
    #[arg(long = "append-role-name", action = ArgAction::Append)]
    append_role_name: Vec<String>,
    #[arg(long = "append-role-id", action = ArgAction::Append)]
    append_role_id: Vec<String>,
    /// (create) A duration after which the token stops working
    #[arg(long = "expires-ttl")]
    expires_ttl: Option<String>,
    /// (create) Keep the token in this datacenter
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    local: bool,
}

#[derive(Debug, Args)]
pub struct TokenReadArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "")]
    id: String,
    /// Read the token the request is made with
    #[arg(long = "self", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    myself: bool,
}

#[derive(Debug, Args)]
pub struct TokenCloneArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "")]
    id: String,
    #[arg(long)]
    description: Option<String>,
}

/// What policy and role writes share.
#[derive(Debug, Args)]
pub struct Named {
    /// (update) The ID or a unique prefix of it; or give -name alone to find it by name
    #[arg(long, default_value = "")]
    id: String,
    #[arg(long, default_value = "")]
    name: String,
    #[arg(long)]
    description: Option<String>,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    named: Named,
    /// Rules in HCL or JSON; `@FILE` reads a file, `-` standard input
    #[arg(long)]
    rules: Option<String>,
    /// A datacenter the policy applies in (repeatable; all when none)
    #[arg(long = "valid-datacenter", action = ArgAction::Append)]
    valid_datacenter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    named: Named,
    #[command(flatten)]
    links: Links,
}

pub async fn run(cmd: AclCommand) -> u8 {
    let result = match cmd {
        AclCommand::Bootstrap(c) => bootstrap(c).await,
        AclCommand::Token(t) => match t {
            TokenCommand::Create(a) => token_write(a, true).await,
            TokenCommand::Update(a) => token_write(a, false).await,
            TokenCommand::List(c) => list(c, Kind::Token).await,
            TokenCommand::Read(a) => token_read(a).await,
            TokenCommand::Clone(a) => token_clone(a).await,
            TokenCommand::Delete(a) => delete(a.common, Kind::Token, &a.id, "").await,
        },
        AclCommand::Policy(p) => match p {
            PolicyCommand::Create(a) => policy_write(a, true).await,
            PolicyCommand::Update(a) => policy_write(a, false).await,
            PolicyCommand::List(c) => list(c, Kind::Policy).await,
            PolicyCommand::Read(a) => read(a.common, Kind::Policy, &a.id, &a.name).await,
            PolicyCommand::Delete(a) => delete(a.common, Kind::Policy, &a.id, &a.name).await,
        },
        AclCommand::Role(r) => match r {
            RoleCommand::Create(a) => role_write(a, true).await,
            RoleCommand::Update(a) => role_write(a, false).await,
            RoleCommand::List(c) => list(c, Kind::Role).await,
            RoleCommand::Read(a) => read(a.common, Kind::Role, &a.id, &a.name).await,
            RoleCommand::Delete(a) => delete(a.common, Kind::Role, &a.id, &a.name).await,
        },
    };
    result.unwrap_or_else(|e| fail(format!("{e:#}")))
}

/// `cairn login -method NAME -bearer-token-file F -token-sink-file OUT [-meta k=v]`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// The auth method to log in with
    #[arg(long, default_value = "")]
    method: String,
    /// A file holding the bearer token (a JWT)
    #[arg(long = "bearer-token-file")]
    bearer_token_file: Option<std::path::PathBuf>,
    /// Where to write the new token's secret
    #[arg(long = "token-sink-file")]
    token_sink_file: Option<std::path::PathBuf>,
    /// Metadata for the token, as key=value (repeatable)
    #[arg(long, action = ArgAction::Append)]
    meta: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    http: HttpFlags,
}

pub async fn login(a: LoginArgs) -> u8 {
    let run = async {
        if a.method.is_empty() {
            bail!("Missing required '-method' flag");
        }
        let Some(bearer_file) = &a.bearer_token_file else {
            bail!("Missing required '-bearer-token-file' flag");
        };
        let Some(sink) = &a.token_sink_file else {
            bail!("Missing required '-token-sink-file' flag");
        };
        let bearer = std::fs::read_to_string(bearer_file).with_context(|| {
            format!("Error reading bearer token file {}", bearer_file.display())
        })?;
        let mut meta = Map::new();
        for kv in &a.meta {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("Metadata must be of the form 'key=value', got {kv:?}");
            };
            meta.insert(k.to_string(), Value::String(v.to_string()));
        }
        let client = Client::new(&a.http)?;
        let body = json!({"AuthMethod": a.method, "BearerToken": bearer.trim(), "Meta": meta});
        let r = client
            .call(
                Method::POST,
                "/v1/acl/login",
                &[],
                Some(body.to_string().into_bytes()),
            )
            .await?;
        if !r.status.is_success() {
            bail!(
                "Error logging in: Unexpected response code: {} ({})",
                r.status.as_u16(),
                r.text()
            );
        }
        let token: Value = r.json()?;
        let secret = token["SecretID"].as_str().unwrap_or_default();
        std::fs::write(sink, secret)
            .with_context(|| format!("Error writing token to file {}", sink.display()))?;
        anyhow::Ok(0)
    };
    run.await.unwrap_or_else(|e| fail(format!("{e:#}")))
}

pub async fn logout(a: LogoutArgs) -> u8 {
    let run = async {
        let client = Client::new(&a.http)?;
        let r = client
            .call(Method::POST, "/v1/acl/logout", &[], None)
            .await?;
        if !r.status.is_success() {
            bail!(
                "Error destroying token: Unexpected response code: {} ({})",
                r.status.as_u16(),
                r.text()
            );
        }
        anyhow::Ok(0)
    };
    run.await.unwrap_or_else(|e| fail(format!("{e:#}")))
}

/// What an ACL command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token,
    Policy,
    Role,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Policy => "policy",
            Kind::Role => "role",
        }
    }

    fn list_path(self) -> &'static str {
        match self {
            Kind::Token => "/v1/acl/tokens",
            Kind::Policy => "/v1/acl/policies",
            Kind::Role => "/v1/acl/roles",
        }
    }

    fn id_field(self) -> &'static str {
        match self {
            Kind::Token => "AccessorID",
            _ => "ID",
        }
    }

    /// The fields of a read an update sends back.
    fn writable(self) -> &'static [&'static str] {
        match self {
            Kind::Token => &[
                "AccessorID",
                "Description",
                "Policies",
                "Roles",
                "ServiceIdentities",
                "NodeIdentities",
                "TemplatedPolicies",
                "Local",
            ],
            Kind::Policy => &["ID", "Name", "Description", "Rules", "Datacenters"],
            Kind::Role => &[
                "ID",
                "Name",
                "Description",
                "Policies",
                "ServiceIdentities",
                "NodeIdentities",
                "TemplatedPolicies",
            ],
        }
    }

    fn show(self, v: &Value) -> String {
        match self {
            Kind::Token => show_token(v),
            Kind::Policy => show_policy(v),
            Kind::Role => show_role(v),
        }
    }
}

/// Prints an answer in the chosen format.
fn print(format: &str, kind: Kind, v: &Value) -> anyhow::Result<u8> {
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(v)?),
        "pretty" => match v.as_array() {
            Some(items) => {
                let shown: Vec<String> = items.iter().map(|i| kind.show(i)).collect();
                println!("{}", shown.join("\n"));
            }
            None => print!("{}", kind.show(v)),
        },
        other => bail!("Invalid format: {other} (pretty or json)"),
    }
    Ok(0)
}

/// The answer as JSON, or Consul's `Failed to ...` error with the agent's message.
async fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
    what: &str,
) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string().into_bytes());
    let r = client.call(method, path, &[], body).await?;
    if !r.status.is_success() {
        bail!(
            "Failed to {what}: Unexpected response code: {} ({})",
            r.status.as_u16(),
            r.text()
        );
    }
    r.json()
}

/// A full ID from an ID or a unique prefix of one, or from a name.
async fn resolve(client: &Client, kind: Kind, id: &str, name: &str) -> anyhow::Result<String> {
    let word = kind.word();
    if id.is_empty() {
        if name.is_empty() || kind == Kind::Token {
            bail!("Must specify the -id parameter");
        }
        let path = format!("/v1/acl/{word}/name/{name}");
        let v = call(client, Method::GET, &path, None, &format!("read {word}")).await?;
        return Ok(v["ID"].as_str().unwrap_or_default().to_string());
    }
    if cairn_shared::acl::is_uuid(id) {
        return Ok(id.to_string());
    }
    let all = call(client, Method::GET, kind.list_path(), None, "list").await?;
    let field = kind.id_field();
    let found: Vec<&str> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v[field].as_str())
        .filter(|i| i.starts_with(id))
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => bail!("Error determining {word} ID: No such {word} ID with prefix: {id}"),
        _ => bail!("Error determining {word} ID: Multiple {word} IDs found with prefix: {id}"),
    }
}

async fn bootstrap(c: Common) -> anyhow::Result<u8> {
    let client = Client::new(&c.http)?;
    let v = call(
        &client,
        Method::PUT,
        "/v1/acl/bootstrap",
        None,
        "bootstrap ACLs",
    )
    .await?;
    print(&c.format, Kind::Token, &v)
}

async fn list(c: Common, kind: Kind) -> anyhow::Result<u8> {
    let client = Client::new(&c.http)?;
    let what = format!("retrieve the {} list", kind.word());
    let v = call(&client, Method::GET, kind.list_path(), None, &what).await?;
    print(&c.format, kind, &v)
}

async fn read(c: Common, kind: Kind, id: &str, name: &str) -> anyhow::Result<u8> {
    let client = Client::new(&c.http)?;
    let id = resolve(&client, kind, id, name).await?;
    let word = kind.word();
    let what = format!("read {word} {id}");
    let v = call(
        &client,
        Method::GET,
        &format!("/v1/acl/{word}/{id}"),
        None,
        &what,
    )
    .await?;
    print(&c.format, kind, &v)
}

async fn delete(c: Common, kind: Kind, id: &str, name: &str) -> anyhow::Result<u8> {
    let client = Client::new(&c.http)?;
    let id = resolve(&client, kind, id, name).await?;
    let word = kind.word();
    let path = format!("/v1/acl/{word}/{id}");
    call(
        &client,
        Method::DELETE,
        &path,
        None,
        &format!("delete {word} {id}"),
    )
    .await?;
    let noun = if kind == Kind::Token { "token" } else { word };
    println!("{} {id:?} deleted successfully", capitalised(noun));
    Ok(0)
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

async fn token_read(a: TokenReadArgs) -> anyhow::Result<u8> {
    if a.myself {
        let client = Client::new(&a.common.http)?;
        let v = call(
            &client,
            Method::GET,
            "/v1/acl/token/self",
            None,
            "read token",
        )
        .await?;
        return print(&a.common.format, Kind::Token, &v);
    }
    read(a.common, Kind::Token, &a.id, "").await
}

async fn token_clone(a: TokenCloneArgs) -> anyhow::Result<u8> {
    let client = Client::new(&a.common.http)?;
    let id = resolve(&client, Kind::Token, &a.id, "").await?;
    let mut body = Map::new();
    if let Some(d) = a.description {
        body.insert("Description".into(), Value::String(d));
    }
    let path = format!("/v1/acl/token/{id}/clone");
    let what = "clone token";
    let v = call(&client, Method::PUT, &path, Some(Value::Object(body)), what).await?;
    print(&a.common.format, Kind::Token, &v)
}

/// `NAME` or `NAME:DC1,DC2`.
fn service_identity(s: &str) -> Value {
    match s.split_once(':') {
        Some((name, dcs)) => json!({"ServiceName": name,
            "Datacenters": dcs.split(',').filter(|d| !d.is_empty()).collect::<Vec<_>>()}),
        None => json!({ "ServiceName": s }),
    }
}

/// `NODE:DC`.
fn node_identity(s: &str) -> anyhow::Result<Value> {
    match s.split_once(':') {
        Some((node, dc)) if !node.is_empty() && !dc.is_empty() => {
            Ok(json!({"NodeName": node, "Datacenter": dc}))
        }
        _ => bail!("Malformed -node-identity argument: {s:?}"),
    }
}

fn links(ids: &[String], names: &[String]) -> Vec<Value> {
    let by_id = ids.iter().map(|i| json!({ "ID": i }));
    by_id
        .chain(names.iter().map(|n| json!({ "Name": n })))
        .collect()
}

/// Sets `field` from `replace` links when any are given, then adds `append` ones.
fn set_links(body: &mut Map<String, Value>, field: &str, replace: Vec<Value>, add: Vec<Value>) {
    if !replace.is_empty() {
        body.insert(field.into(), Value::Array(replace));
    }
    if !add.is_empty() {
        let entry = body.entry(field).or_insert_with(|| json!([]));
        if !entry.is_array() {
            *entry = json!([]);
        }
        if let Some(list) = entry.as_array_mut() {
            list.extend(add);
        }
    }
}

/// Applies the link and identity flags to a token or role body.
fn apply_links(body: &mut Map<String, Value>, l: &Links) -> anyhow::Result<()> {
    set_links(
        body,
        "Policies",
        links(&l.policy_id, &l.policy_name),
        links(&l.append_policy_id, &l.append_policy_name),
    );
    if !l.service_identity.is_empty() {
        let v = l.service_identity.iter().map(|s| service_identity(s));
        body.insert("ServiceIdentities".into(), Value::Array(v.collect()));
    }
    if !l.node_identity.is_empty() {
        let v: anyhow::Result<Vec<Value>> =
            l.node_identity.iter().map(|s| node_identity(s)).collect();
        body.insert("NodeIdentities".into(), Value::Array(v?));
    }
    if !l.templated_policy.is_empty() {
        let name = match l.var.as_deref().map(|v| v.split_once(':')) {
            None => None,
            Some(Some(("name", value))) => Some(value),
            Some(_) => bail!("Malformed -var argument: {:?}, expected name:VALUE", l.var),
        };
        let v = l.templated_policy.iter().map(|t| match name {
            Some(n) => json!({"TemplateName": t, "TemplateVariables": {"Name": n}}),
            None => json!({ "TemplateName": t }),
        });
        body.insert("TemplatedPolicies".into(), Value::Array(v.collect()));
    }
    Ok(())
}

/// The current object for an update, or an empty body for a create.
async fn start_body(
    client: &Client,
    kind: Kind,
    create: bool,
    id: &str,
    name: &str,
) -> anyhow::Result<(Map<String, Value>, String)> {
    if create {
        return Ok((Map::new(), String::new()));
    }
    let id = resolve(client, kind, id, name).await?;
    let word = kind.word();
    let path = format!("/v1/acl/{word}/{id}");
    let what = format!("read {word} {id}");
    let current = call(client, Method::GET, &path, None, &what).await?;
    let Value::Object(mut m) = current else {
        bail!("Failed to read {word} {id}: not an object");
    };
    // What a write takes back; the secret stays as the servers hold it.
    m.retain(|k, _| kind.writable().contains(&k.as_str()));
    // Links go back by ID; the server fills in names.
    for field in ["Policies", "Roles"] {
        if let Some(Value::Array(list)) = m.get_mut(field) {
            for l in list.iter_mut() {
                if let Value::Object(o) = l {
                    o.remove("Name");
                }
            }
        }
    }
    Ok((m, id))
}

async fn send(
    client: &Client,
    kind: Kind,
    id: &str,
    body: Map<String, Value>,
    format: &str,
) -> anyhow::Result<u8> {
    let word = kind.word();
    let (path, what) = if id.is_empty() {
        (format!("/v1/acl/{word}"), format!("create new {word}"))
    } else {
        (
            format!("/v1/acl/{word}/{id}"),
            format!("update {word} {id}"),
        )
    };
    let v = call(client, Method::PUT, &path, Some(Value::Object(body)), &what).await?;
    print(format, kind, &v)
}

async fn token_write(a: TokenArgs, create: bool) -> anyhow::Result<u8> {
    let client = Client::new(&a.common.http)?;
    let (mut body, id) = start_body(&client, Kind::Token, create, &a.id, "").await?;
    if create {
        for (k, v) in [("AccessorID", &a.accessor), ("SecretID", &a.secret)] {
            if !v.is_empty() {
                body.insert(k.into(), Value::String(v.clone()));
            }
        }
        if let Some(ttl) = &a.expires_ttl {
            body.insert("ExpirationTTL".into(), Value::String(ttl.clone()));
        }
        if a.local {
            body.insert("Local".into(), Value::Bool(true));
        }
    }
    if let Some(d) = &a.description {
        body.insert("Description".into(), Value::String(d.clone()));
    }
    apply_links(&mut body, &a.links)?;
    set_links(
        &mut body,
        "Roles",
        links(&a.role_id, &a.role_name),
        links(&a.append_role_id, &a.append_role_name),
    );
    send(&client, Kind::Token, &id, body, &a.common.format).await
}

/// `@FILE` is a file's text, `-` standard input, anything else the rules themselves.
fn rules_text(r: &str) -> anyhow::Result<String> {
    if let Some(path) = r.strip_prefix('@') {
        return std::fs::read_to_string(path).with_context(|| format!("reading {path}"));
    }
    if r == "-" {
        return std::io::read_to_string(std::io::stdin()).context("reading standard input");
    }
    Ok(r.to_string())
}

/// A policy or role to write: the current one on update, with `-name` and `-description`.
async fn named_body(
    client: &Client,
    kind: Kind,
    create: bool,
    n: &Named,
) -> anyhow::Result<(Map<String, Value>, String)> {
    let (id, name) = (n.id.as_str(), n.name.as_str());
    if create && name.is_empty() {
        bail!("Missing required '-name' flag");
    }
    let (mut body, id) = start_body(client, kind, create, id, name).await?;
    if !name.is_empty() {
        body.insert("Name".into(), Value::String(name.to_string()));
    }
    if let Some(d) = &n.description {
        body.insert("Description".into(), Value::String(d.clone()));
    }
    Ok((body, id))
}

async fn policy_write(a: PolicyArgs, create: bool) -> anyhow::Result<u8> {
    let client = Client::new(&a.common.http)?;
    let (mut body, id) = named_body(&client, Kind::Policy, create, &a.named).await?;
    if let Some(r) = &a.rules {
        body.insert("Rules".into(), Value::String(rules_text(r)?));
    }
    if !a.valid_datacenter.is_empty() {
        body.insert("Datacenters".into(), json!(a.valid_datacenter));
    }
    send(&client, Kind::Policy, &id, body, &a.common.format).await
}

async fn role_write(a: RoleArgs, create: bool) -> anyhow::Result<u8> {
    let client = Client::new(&a.common.http)?;
    let (mut body, id) = named_body(&client, Kind::Role, create, &a.named).await?;
    apply_links(&mut body, &a.links)?;
    send(&client, Kind::Role, &id, body, &a.common.format).await
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_default()
}

/// The `Policies:`/`Roles:` and identity sections tokens and roles share.
fn show_links(v: &Value, out: &mut String) {
    for (field, title) in [("Policies", "Policies"), ("Roles", "Roles")] {
        if let Some(list) = v[field].as_array().filter(|l| !l.is_empty()) {
            out.push_str(&format!("{title}:\n"));
            for l in list {
                out.push_str(&format!("   {} - {}\n", text(l, "ID"), text(l, "Name")));
            }
        }
    }
    if let Some(list) = v["ServiceIdentities"].as_array().filter(|l| !l.is_empty()) {
        out.push_str("Service Identities:\n");
        for s in list {
            let dcs: Vec<&str> = s["Datacenters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let dcs = if dcs.is_empty() {
                "all".to_string()
            } else {
                dcs.join(", ")
            };
            out.push_str(&format!(
                "   {} (Datacenters: {dcs})\n",
                text(s, "ServiceName")
            ));
        }
    }
    if let Some(list) = v["TemplatedPolicies"].as_array().filter(|l| !l.is_empty()) {
        out.push_str("Templated Policies:\n");
        for t in list {
            out.push_str(&format!("   {}\n", text(t, "TemplateName")));
            if let Some(n) = t["TemplateVariables"]["name"].as_str() {
                out.push_str(&format!("      Name: {n}\n"));
            }
        }
    }
    if let Some(list) = v["NodeIdentities"].as_array().filter(|l| !l.is_empty()) {
        out.push_str("Node Identities:\n");
        for n in list {
            out.push_str(&format!(
                "   {} (Datacenter: {})\n",
                text(n, "NodeName"),
                text(n, "Datacenter")
            ));
        }
    }
}

/// A token as Consul's CLI prints it.
fn show_token(v: &Value) -> String {
    let mut out = format!(
        "AccessorID:       {}\nSecretID:         {}\nDescription:      {}\n\
         Local:            {}\nCreate Time:      {}\n",
        text(v, "AccessorID"),
        text(v, "SecretID"),
        text(v, "Description"),
        v["Local"].as_bool().unwrap_or(false),
        text(v, "CreateTime"),
    );
    if let Some(e) = v["ExpirationTime"].as_str() {
        out.push_str(&format!("Expiration Time:  {e}\n"));
    }
    show_links(v, &mut out);
    out
}

/// A policy as Consul's CLI prints it.
fn show_policy(v: &Value) -> String {
    let dcs: Vec<&str> = v["Datacenters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut out = format!(
        "ID:           {}\nName:         {}\nDescription:  {}\nDatacenters:  {}\n",
        text(v, "ID"),
        text(v, "Name"),
        text(v, "Description"),
        dcs.join(", "),
    );
    if let Some(r) = v["Rules"].as_str() {
        out.push_str(&format!("Rules:\n{r}\n"));
    }
    out
}

/// A role as Consul's CLI prints it.
fn show_role(v: &Value) -> String {
    let mut out = format!(
        "ID:           {}\nName:         {}\nDescription:  {}\n",
        text(v, "ID"),
        text(v, "Name"),
        text(v, "Description"),
    );
    show_links(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_as_consul_spells_them() {
        assert_eq!(
            service_identity("web:dc1,dc2"),
            json!({"ServiceName": "web", "Datacenters": ["dc1", "dc2"]})
        );
        assert_eq!(service_identity("web"), json!({"ServiceName": "web"}));
        assert!(node_identity("n1").is_err());
        assert_eq!(
            node_identity("n1:dc1").unwrap(),
            json!({"NodeName": "n1", "Datacenter": "dc1"})
        );
    }

    #[test]
    fn update_links_replace_then_append() {
        let mut body = Map::new();
        body.insert("Policies".into(), json!([{"ID": "a"}]));
        set_links(&mut body, "Policies", Vec::new(), links(&[], &["b".into()]));
        assert_eq!(body["Policies"], json!([{"ID": "a"}, {"Name": "b"}]));
        set_links(&mut body, "Policies", links(&["c".into()], &[]), Vec::new());
        assert_eq!(body["Policies"], json!([{"ID": "c"}]));
    }
}
