//! `cairn kv get|put|delete|export|import`, with Consul's flags, messages and exit codes.

use std::io::Read;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cairn_shared::api::KvPair;
use clap::{ArgAction, Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Read a key, or keys under a prefix
    Get(GetArgs),
    /// Write a key
    Put(PutArgs),
    /// Delete a key, or keys under a prefix
    Delete(DeleteArgs),
    /// Print keys under a prefix as JSON
    Export(ExportArgs),
    /// Write keys from `kv export` JSON
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Print the value base64-encoded
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    base64: bool,
    /// Print every field of the entry
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    detailed: bool,
    /// List key names only
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    keys: bool,
    /// Read every key under the prefix
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    recurse: bool,
    /// Separator for -keys
    #[arg(long, default_value = "/")]
    separator: String,
    args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Check-and-set: write only if the key is at -modify-index
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    cas: bool,
    /// Index for -cas
    #[arg(long = "modify-index", default_value_t = 0)]
    modify_index: u64,
    /// Opaque flags stored with the key
    #[arg(long, default_value_t = 0)]
    flags: u64,
    /// DATA is base64-encoded
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    base64: bool,
    /// Session for -acquire and -release
    #[arg(long, default_value = "")]
    session: String,
    /// Acquire the lock on the key with -session
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    acquire: bool,
    /// Release the lock on the key held by -session
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    release: bool,
    #[arg(allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Delete only if the key is at -modify-index
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    cas: bool,
    /// Index for -cas
    #[arg(long = "modify-index")]
    modify_index: Option<u64>,
    /// Delete every key under the prefix
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    recurse: bool,
    args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    http: HttpFlags,
    args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    http: HttpFlags,
    #[arg(allow_hyphen_values = true)]
    args: Vec<String>,
}

/// One entry of `kv export` output, Consul's lower-case shape.
#[derive(Debug, Serialize, Deserialize)]
struct ExportEntry {
    key: String,
    flags: u64,
    value: String,
}

pub async fn run(cmd: KvCommand) -> u8 {
    let result = match cmd {
        KvCommand::Get(a) => get(a).await,
        KvCommand::Put(a) => put(a).await,
        KvCommand::Delete(a) => delete(a).await,
        KvCommand::Export(a) => export(a).await,
        KvCommand::Import(a) => import(a).await,
    };
    result.unwrap_or_else(fail)
}

/// A CLI key: Consul strips one leading slash.
fn cli_key(arg: Option<&String>) -> String {
    let k = arg.map(String::as_str).unwrap_or_default();
    k.strip_prefix('/').unwrap_or(k).to_string()
}

fn kv_path(key: &str) -> String {
    format!("/v1/kv/{key}")
}

fn flag(name: &'static str) -> (&'static str, String) {
    (name, String::new())
}

async fn get(a: GetArgs) -> anyhow::Result<u8> {
    if a.args.len() > 1 {
        return Ok(fail(format!(
            "Too many arguments (expected 1, got {})",
            a.args.len()
        )));
    }
    let key = cli_key(a.args.first());
    if key.is_empty() && !a.recurse && !a.keys {
        return Ok(fail("Error! Missing KEY argument"));
    }
    let client = Client::new(&a.http)?;
    if a.keys {
        let mut q = vec![flag("keys")];
        if !a.recurse {
            q.push(("separator", a.separator.clone()));
        }
        let reply = client.get(&kv_path(&key), &q).await?;
        if reply.status == 404 {
            return Ok(0);
        }
        let keys: Vec<String> = reply.ok()?.json()?;
        for k in keys {
            println!("{k}");
        }
        return Ok(0);
    }
    if a.recurse {
        let reply = client.get(&kv_path(&key), &[flag("recurse")]).await?;
        if reply.status == 404 {
            return Ok(0);
        }
        let pairs: Vec<KvPair> = reply.ok()?.json()?;
        for (i, p) in pairs.iter().enumerate() {
            if a.detailed {
                if i > 0 {
                    println!();
                }
                print_detailed(p, a.base64);
            } else {
                println!("{}:{}", p.key, show(p, a.base64));
            }
        }
        return Ok(0);
    }
    let reply = client.get(&kv_path(&key), &[]).await?;
    if reply.status == 404 {
        return Ok(fail(format!("Error! No key exists at: {key}")));
    }
    let pairs: Vec<KvPair> = reply.ok()?.json()?;
    let Some(p) = pairs.first() else {
        return Ok(fail(format!("Error! No key exists at: {key}")));
    };
    if a.detailed {
        print_detailed(p, a.base64);
    } else {
        println!("{}", show(p, a.base64));
    }
    Ok(0)
}

fn show(p: &KvPair, b64: bool) -> String {
    let v = p.value.as_deref().unwrap_or_default();
    if b64 {
        STANDARD.encode(v)
    } else {
        String::from_utf8_lossy(v).into_owned()
    }
}

/// Consul's `-detailed` block: labels padded like Go's tabwriter (padding 6).
fn print_detailed(p: &KvPair, b64: bool) {
    let session = if p.session.is_empty() {
        "-".to_string()
    } else {
        p.session.clone()
    };
    let rows = [
        ("CreateIndex", p.create_index.to_string()),
        ("Flags", p.flags.to_string()),
        ("Key", p.key.clone()),
        ("LockIndex", p.lock_index.to_string()),
        ("ModifyIndex", p.modify_index.to_string()),
        ("Session", session),
        ("Value", show(p, b64)),
    ];
    for (label, value) in rows {
        println!("{label:<17}{value}");
    }
}

/// DATA as Consul reads it: `@file`, `-` for stdin, or the literal.
fn read_data(arg: Option<&String>) -> anyhow::Result<Vec<u8>> {
    match arg.map(String::as_str) {
        None | Some("") => Ok(Vec::new()),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("Failed to read stdin")?;
            Ok(buf)
        }
        Some(s) if s.starts_with('@') => {
            std::fs::read(&s[1..]).with_context(|| format!("Failed to read file: {}", &s[1..]))
        }
        Some(s) => Ok(s.as_bytes().to_vec()),
    }
}

async fn put(a: PutArgs) -> anyhow::Result<u8> {
    match a.args.len() {
        0 => return Ok(fail("Error! Missing KEY argument")),
        1 | 2 => {}
        n => {
            return Ok(fail(format!(
                "Error! Too many arguments (expected 1 or 2, got {n})"
            )));
        }
    }
    let key = a.args[0].clone();
    if key.starts_with('/') {
        return Ok(fail(format!(
            "Error! Failed writing data: Invalid key. Key must not begin with a '/': {key}"
        )));
    }
    let mut data = read_data(a.args.get(1))?;
    if a.base64 {
        data = match STANDARD.decode(&data) {
            Ok(d) => d,
            Err(e) => return Ok(fail(format!("Error! Cannot base 64 decode data: {e}"))),
        };
    }
    if (a.acquire || a.release) && a.session.is_empty() {
        return Ok(fail(
            "Error! Missing -session (required with -acquire and -release)",
        ));
    }
    let client = Client::new(&a.http)?;
    let mut q = Vec::new();
    if a.flags != 0 {
        q.push(("flags", a.flags.to_string()));
    }
    let (mode, ok_msg) = if a.cas {
        q.push(("cas", a.modify_index.to_string()));
        ("cas", format!("Success! Data written to: {key}"))
    } else if a.acquire {
        q.push(("acquire", a.session.clone()));
        ("acquire", format!("Success! Lock acquired on: {key}"))
    } else if a.release {
        q.push(("release", a.session.clone()));
        ("release", format!("Success! Lock released on: {key}"))
    } else {
        ("set", format!("Success! Data written to: {key}"))
    };
    let reply = match client
        .put(&kv_path(&key), &q, data)
        .await
        .and_then(|r| r.ok())
    {
        Ok(r) => r,
        Err(e) if mode == "cas" => return Ok(fail(format!("Error! Did not write to {key}: {e}"))),
        Err(e) => return Ok(fail(format!("Error! Failed writing data: {e}"))),
    };
    if reply.json::<bool>()? {
        println!("{ok_msg}");
        return Ok(0);
    }
    Ok(fail(match mode {
        "cas" if a.modify_index == 0 => format!(
            "Error! Did not write to {key}: CAS performed with index=0 and key already exists."
        ),
        "cas" => format!("Error! Did not write to {key}: CAS failed"),
        "acquire" => "Error! Did not acquire lock".to_string(),
        "release" => "Error! Did not release lock".to_string(),
        _ => format!("Error! Failed writing data: {key}"),
    }))
}

async fn delete(a: DeleteArgs) -> anyhow::Result<u8> {
    if a.args.len() > 1 {
        return Ok(fail(format!(
            "Too many arguments (expected 1, got {})",
            a.args.len()
        )));
    }
    let key = cli_key(a.args.first());
    if key.is_empty() && !a.recurse {
        return Ok(fail("Error! Missing KEY argument"));
    }
    if a.modify_index.is_some() && !a.cas {
        return Ok(fail("Cannot specify -modify-index without -cas!"));
    }
    if a.cas && a.recurse {
        return Ok(fail("Cannot specify both -cas and -recurse!"));
    }
    let client = Client::new(&a.http)?;
    if a.recurse {
        return Ok(
            match client
                .delete(&kv_path(&key), &[flag("recurse")])
                .await
                .and_then(|r| r.ok())
            {
                Ok(_) => {
                    println!("Success! Deleted keys with prefix: {key}");
                    0
                }
                Err(e) => fail(format!("Error! Did not delete prefix {key}: {e}")),
            },
        );
    }
    if a.cas {
        let index = a.modify_index.unwrap_or(0);
        if index == 0 {
            return Ok(fail(
                "Cannot delete a key that does not exist. Provide a -modify-index greater than than 0.",
            ));
        }
        let reply = match client
            .delete(&kv_path(&key), &[("cas", index.to_string())])
            .await
            .and_then(|r| r.ok())
        {
            Ok(r) => r,
            Err(e) => return Ok(fail(format!("Error! Did not delete key {key}: {e}"))),
        };
        if !reply.json::<bool>()? {
            return Ok(fail(format!("Error! Did not delete key {key}: CAS failed")));
        }
        println!("Success! Deleted key: {key}");
        return Ok(0);
    }
    match client
        .delete(&kv_path(&key), &[])
        .await
        .and_then(|r| r.ok())
    {
        Ok(_) => {
            println!("Success! Deleted key: {key}");
            Ok(0)
        }
        Err(e) => Ok(fail(format!("Error deleting key {key}: {e}"))),
    }
}

async fn export(a: ExportArgs) -> anyhow::Result<u8> {
    if a.args.len() > 1 {
        return Ok(fail(format!(
            "Too many arguments (expected 1, got {})",
            a.args.len()
        )));
    }
    let key = cli_key(a.args.first());
    let client = Client::new(&a.http)?;
    let reply = client.get(&kv_path(&key), &[flag("recurse")]).await?;
    let pairs: Vec<KvPair> = if reply.status == 404 {
        Vec::new()
    } else {
        match reply.ok() {
            Ok(r) => r.json()?,
            Err(e) => return Ok(fail(format!("Error querying Cairn agent: {e}"))),
        }
    };
    let out: Vec<ExportEntry> = pairs
        .into_iter()
        .map(|p| ExportEntry {
            value: STANDARD.encode(p.value.unwrap_or_default()),
            key: p.key,
            flags: p.flags,
        })
        .collect();
    println!("{}", tab_indented(&out));
    Ok(0)
}

/// JSON indented with tabs, as `consul kv export` prints it.
fn tab_indented<T: Serialize>(v: &T) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    if v.serialize(&mut ser).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

async fn import(a: ImportArgs) -> anyhow::Result<u8> {
    match a.args.len() {
        0 => return Ok(fail("Error! Missing DATA argument")),
        1 => {}
        n => {
            return Ok(fail(format!(
                "Error! Too many arguments (expected 1, got {n})"
            )));
        }
    }
    let data = read_data(a.args.first())?;
    if data.is_empty() {
        return Ok(fail("Error! Empty DATA argument"));
    }
    let entries: Vec<ExportEntry> = match serde_json::from_slice(&data) {
        Ok(e) => e,
        Err(e) => return Ok(fail(format!("Cannot unmarshal data: {e}"))),
    };
    let client = Client::new(&a.http)?;
    for e in entries {
        let value = match STANDARD.decode(&e.value) {
            Ok(v) => v,
            Err(err) => {
                return Ok(fail(format!(
                    "Error base 64 decoding value for key {}: {err}",
                    e.key
                )));
            }
        };
        let q = if e.flags != 0 {
            vec![("flags", e.flags.to_string())]
        } else {
            Vec::new()
        };
        if let Err(err) = client
            .put(&kv_path(&e.key), &q, value)
            .await
            .and_then(|r| r.ok())
        {
            return Ok(fail(format!(
                "Error! Failed writing data for key {}: {err}",
                e.key
            )));
        }
        println!("Imported: {}", e.key);
    }
    Ok(0)
}
