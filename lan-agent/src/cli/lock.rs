//! `cairn lock [-n N] PREFIX CMD...`: run a command while holding a lock (`-n 1`) or a slot
//! of a semaphore (`-n > 1`), with Consul's key layout so Consul's own `lock` and API
//! clients interoperate.
//!
//! - Mutex: session (TTL 15s, renewed every 7.5s), then `PUT PREFIX/.lock?acquire` with
//!   flags `0x2ddccbc058a50c18`, waiting with blocking reads while someone else holds it.
//! - Semaphore: a session with `Behavior: delete`, a contender key `PREFIX/<session>` and a
//!   coordination key `PREFIX/.lock` holding `{"Limit":N,"Holders":{…}}` under flags
//!   `0xe0f69a2baa414de0`, updated with check-and-set.
//!
//! The child gets `CONSUL_LOCK_HELD=true`. If the lock is lost (session invalidated, key
//! taken) or this process is signalled, the child gets SIGTERM, then SIGKILL after 5s.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cairn_shared::api::KvPair;
use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::client::{Client, HttpFlags, Reply};
use super::fail;

/// Consul's `LockFlagValue`.
pub const LOCK_FLAG: u64 = 0x2ddc_cbc0_58a5_0c18;
/// Consul's `SemaphoreFlagValue`.
pub const SEMAPHORE_FLAG: u64 = 0xe0f6_9a2b_aa41_4de0;
const SESSION_TTL: &str = "15s";
const SESSION_TTL_DUR: Duration = Duration::from_secs(15);
const LOCK_WAIT: &str = "15s";
const LOCK_RETRY: Duration = Duration::from_secs(5);
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// How many may hold the lock at once (1 is a mutex, more a semaphore)
    #[arg(short = 'n', default_value_t = 1, allow_negative_numbers = true)]
    limit: i64,
    /// Session name
    #[arg(long, default_value = "")]
    name: String,
    /// Give up acquiring after this long (default: wait forever)
    #[arg(long, alias = "try")]
    timeout: Option<String>,
    /// Retries of the lock monitor on server errors
    #[arg(
        long = "monitor-retry",
        default_value_t = 3,
        allow_negative_numbers = true
    )]
    monitor_retry: i64,
    /// Pass this process's stdin to the child
    #[arg(long = "pass-stdin", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pass_stdin: bool,
    /// Run the child through a shell
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "true", action = ArgAction::Set)]
    shell: bool,
    /// Exit 2 when the child fails
    #[arg(long = "child-exit-code", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    child_exit_code: bool,
    /// Say what is happening
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    verbose: bool,
    /// PREFIX then the command to run
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// The semaphore's coordination record.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SemaphoreLock {
    #[serde(rename = "Limit")]
    limit: i64,
    #[serde(rename = "Holders")]
    holders: BTreeMap<String, bool>,
}

struct Ctx {
    client: Client,
    session: String,
    prefix: String,
    limit: i64,
    verbose: bool,
}

impl Ctx {
    fn say(&self, msg: impl std::fmt::Display) {
        if self.verbose {
            println!("{msg}");
        }
    }

    fn lock_key(&self) -> String {
        join(&self.prefix, ".lock")
    }

    fn contender_key(&self) -> String {
        join(&self.prefix, &self.session)
    }
}

fn join(prefix: &str, leaf: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        leaf.to_string()
    } else {
        format!("{p}/{leaf}")
    }
}

fn kv(key: &str) -> String {
    format!("/v1/kv/{key}")
}

fn first_pair(reply: &Reply) -> anyhow::Result<Option<KvPair>> {
    if reply.status == 404 {
        return Ok(None);
    }
    let pairs: Vec<KvPair> =
        serde_json::from_slice(&reply.body).context("decoding the lock key")?;
    Ok(pairs.into_iter().next())
}

pub async fn run(a: LockArgs) -> u8 {
    if a.limit <= 0 {
        return fail("Lock holder limit must be positive");
    }
    if a.args.len() < 2 {
        return fail("Key prefix and child command must be specified");
    }
    let timeout = match &a.timeout {
        None => None,
        Some(t) => match cairn_shared::duration::parse_nanos(t) {
            Ok(n) if n > 0 => Some(Duration::from_nanos(n as u64)),
            Ok(_) => return fail("Timeout must be positive"),
            Err(e) => return fail(format!("invalid value \"{t}\" for flag -timeout: {e}")),
        },
    };
    if a.monitor_retry < 0 {
        return fail("Number for 'monitor-retry' must be >= 0");
    }
    match run_locked(a, timeout).await {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

async fn run_locked(a: LockArgs, timeout: Option<Duration>) -> anyhow::Result<u8> {
    let client = Client::new(&a.http)?;
    client
        .get("/v1/agent/self", &[])
        .await
        .and_then(Reply::ok)
        .map_err(|e| anyhow!("Error querying Cairn agent: {e}"))?;
    let prefix = a.args[0]
        .strip_prefix('/')
        .unwrap_or(&a.args[0])
        .to_string();
    let child_args = a.args[1..].to_vec();
    let name = if a.name.is_empty() {
        format!("Cairn lock for '{}' at '{prefix}'", child_args.join(" "))
    } else {
        a.name.clone()
    };
    let semaphore = a.limit > 1;
    let mut body = serde_json::json!({ "Name": name, "TTL": SESSION_TTL });
    if semaphore {
        body["Behavior"] = "delete".into();
    }
    let reply = client
        .put("/v1/session/create", &[], body.to_string().into_bytes())
        .await
        .and_then(Reply::ok)
        .map_err(|e| anyhow!("Lock setup failed: failed to create session: {e}"))?;
    let created: serde_json::Value = reply.json()?;
    let session = created["ID"].as_str().unwrap_or_default().to_string();
    let ctx = Ctx {
        client,
        session,
        prefix,
        limit: a.limit,
        verbose: a.verbose,
    };
    if semaphore {
        ctx.say(format!(
            "Setting up semaphore (limit {}) at prefix: {}",
            ctx.limit, ctx.prefix
        ));
    } else {
        ctx.say(format!("Setting up lock at path: {}", ctx.lock_key()));
    }

    // The session lives while the renewer runs; `lost` flips when it cannot.
    let (lost_tx, lost_rx) = watch::channel(false);
    let renewer = tokio::spawn(renew(
        ctx.client.clone(),
        ctx.session.clone(),
        lost_tx.clone(),
    ));
    let mut signals = Signals::new()?;

    ctx.say("Attempting lock acquisition");
    let acquired = tokio::select! {
        r = acquire(&ctx, semaphore, timeout) => r,
        _ = signals.recv() => Ok(false),
    };
    let acquired = match acquired {
        Ok(a) => a,
        Err(e) => {
            renewer.abort();
            destroy_session(&ctx).await;
            bail!("Lock acquisition failed: {e}");
        }
    };
    if !acquired {
        renewer.abort();
        if semaphore {
            let _ = ctx.client.delete(&kv(&ctx.contender_key()), &[]).await;
        }
        destroy_session(&ctx).await;
        bail!("Shutdown triggered or timeout during lock acquisition");
    }
    let monitor = tokio::spawn(monitor(
        ctx.client.clone(),
        ctx.session.clone(),
        ctx.prefix.clone(),
        semaphore,
        a.monitor_retry as u32,
        lost_tx,
    ));

    ctx.say("Starting handler");
    let mut child = spawn_child(&child_args, a.shell, a.pass_stdin)?;
    let mut lost = lost_rx;
    let status = tokio::select! {
        s = child.wait() => Some(s.context("waiting for the child")?),
        _ = lost.wait_for(|l| *l) => {
            ctx.say("Lock lost, killing child");
            kill_child(&ctx, &mut child).await;
            None
        }
        _ = signals.recv() => {
            ctx.say("Shutdown triggered, killing child");
            kill_child(&ctx, &mut child).await;
            None
        }
    };
    ctx.say("Child terminated, releasing lock");
    monitor.abort();
    let release = if semaphore {
        release_semaphore(&ctx).await
    } else {
        release_lock(&ctx).await
    };
    renewer.abort();
    destroy_session(&ctx).await;
    if let Err(e) = release {
        bail!("Lock release failed: {e}");
    }
    let cleanup = if semaphore {
        cleanup_semaphore(&ctx).await
    } else {
        cleanup_lock(&ctx).await
    };
    if let Err(e) = cleanup {
        bail!("Lock cleanup failed: {e}");
    }
    if let Some(status) = status
        && !status.success()
    {
        match status.code() {
            Some(code) => eprintln!("Error running handler: exit status {code}"),
            None => eprintln!("Error running handler: {status}"),
        }
        if a.child_exit_code {
            return Ok(2);
        }
    }
    Ok(0)
}

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Renews every TTL/2; after a failure, every second; gives up (and reports the lock lost)
/// when the session is gone or no renewal succeeded within one TTL.
async fn renew(client: Client, session: String, lost: watch::Sender<bool>) {
    let path = format!("/v1/session/renew/{session}");
    let mut last_ok = Instant::now();
    let mut wait = SESSION_TTL_DUR / 2;
    loop {
        sleep(wait).await;
        match client.put(&path, &[], Vec::new()).await {
            Ok(r) if r.status.is_success() => {
                last_ok = Instant::now();
                wait = SESSION_TTL_DUR / 2;
            }
            Ok(r) if r.status == 404 => {
                let _ = lost.send(true);
                return;
            }
            _ => {
                if last_ok.elapsed() >= SESSION_TTL_DUR {
                    let _ = lost.send(true);
                    return;
                }
                wait = Duration::from_secs(1);
            }
        }
    }
}

async fn destroy_session(ctx: &Ctx) {
    let path = format!("/v1/session/destroy/{}", ctx.session);
    let _ = ctx.client.put(&path, &[], Vec::new()).await;
}

async fn acquire(ctx: &Ctx, semaphore: bool, timeout: Option<Duration>) -> anyhow::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let attempt = async {
        if semaphore {
            acquire_semaphore(ctx).await
        } else {
            acquire_lock(ctx).await
        }
    };
    match deadline {
        None => attempt.await,
        Some(d) => tokio::time::timeout_at(d, attempt)
            .await
            .unwrap_or(Ok(false)),
    }
}

async fn acquire_lock(ctx: &Ctx) -> anyhow::Result<bool> {
    let key = ctx.lock_key();
    let mut index = 0u64;
    loop {
        let mut q = vec![("wait", LOCK_WAIT.to_string())];
        if index > 0 {
            q.push(("index", index.to_string()));
        }
        let reply = ctx
            .client
            .get(&kv(&key), &q)
            .await
            .map_err(|e| anyhow!("failed to read lock: {e}"))?;
        if reply.status != 404 && !reply.status.is_success() {
            bail!("failed to read lock: {}", reply.text());
        }
        let reply_index = reply.index();
        if let Some(pair) = first_pair(&reply)? {
            if pair.flags != LOCK_FLAG {
                bail!("Existing key does not match lock use");
            }
            if pair.session == ctx.session {
                return Ok(true);
            }
            if !pair.session.is_empty() {
                index = reply_index;
                continue;
            }
        }
        let got = ctx
            .client
            .put(
                &kv(&key),
                &[
                    ("acquire", ctx.session.clone()),
                    ("flags", LOCK_FLAG.to_string()),
                ],
                Vec::new(),
            )
            .await
            .and_then(Reply::ok)
            .map_err(|e| anyhow!("failed to acquire lock: {e}"))?
            .json::<bool>()?;
        if got {
            return Ok(true);
        }
        // Either someone else took it (block on it) or a lock-delay is running (retry).
        let again = ctx.client.get(&kv(&key), &[]).await?;
        match first_pair(&again)? {
            Some(p) if !p.session.is_empty() && p.session != ctx.session => {
                index = again.index();
            }
            _ => {
                sleep(LOCK_RETRY).await;
                index = 0;
            }
        }
    }
}

/// Reads the semaphore prefix: the coordination record and the sessions holding
/// contender keys.
async fn read_semaphore(
    ctx: &Ctx,
    index: u64,
    consistent: bool,
) -> anyhow::Result<(u64, Option<KvPair>, SemaphoreLock, Vec<String>)> {
    let mut q = vec![("recurse", String::new())];
    if index > 0 {
        q.push(("index", index.to_string()));
        q.push(("wait", LOCK_WAIT.to_string()));
    }
    if consistent {
        q.push(("consistent", String::new()));
    }
    let reply = ctx.client.get(&kv(&format!("{}/", ctx.prefix)), &q).await?;
    if reply.status != 404 && !reply.status.is_success() {
        bail!("failed to read prefix: {}", reply.text());
    }
    let pairs: Vec<KvPair> = if reply.status == 404 {
        Vec::new()
    } else {
        reply.json()?
    };
    let lock_key = ctx.lock_key();
    let lock_pair = pairs.iter().find(|p| p.key == lock_key).cloned();
    let mut record = SemaphoreLock::default();
    if let Some(p) = &lock_pair {
        if p.flags != SEMAPHORE_FLAG {
            bail!("Existing key does not match semaphore use");
        }
        if let Some(v) = p.value.as_ref().filter(|v| !v.is_empty()) {
            record = serde_json::from_slice(v).map_err(|e| anyhow!("lock decoding failed: {e}"))?;
        }
    }
    let live: Vec<String> = pairs
        .iter()
        .filter(|p| p.key != lock_key && !p.session.is_empty())
        .map(|p| p.session.clone())
        .collect();
    Ok((reply.index(), lock_pair, record, live))
}

async fn acquire_semaphore(ctx: &Ctx) -> anyhow::Result<bool> {
    let contender = ctx.contender_key();
    let made = ctx
        .client
        .put(
            &kv(&contender),
            &[
                ("acquire", ctx.session.clone()),
                ("flags", SEMAPHORE_FLAG.to_string()),
            ],
            Vec::new(),
        )
        .await
        .and_then(Reply::ok)
        .map_err(|e| anyhow!("failed to make contender entry: {e}"))?
        .json::<bool>()?;
    if !made {
        bail!("failed to make contender entry: key is held");
    }
    let mut index = 0;
    loop {
        let (reply_index, lock_pair, mut record, live) = read_semaphore(ctx, index, false).await?;
        if lock_pair.is_some() && record.limit != ctx.limit {
            bail!(
                "semaphore limit conflict (lock: {}, local: {})",
                record.limit,
                ctx.limit
            );
        }
        record.limit = ctx.limit;
        record.holders.retain(|s, _| live.contains(s));
        if record.holders.contains_key(&ctx.session) {
            return Ok(true);
        }
        if record.holders.len() as i64 >= ctx.limit {
            index = reply_index;
            continue;
        }
        record.holders.insert(ctx.session.clone(), true);
        let cas = lock_pair.map_or(0, |p| p.modify_index);
        let ok = ctx
            .client
            .put(
                &kv(&ctx.lock_key()),
                &[
                    ("cas", cas.to_string()),
                    ("flags", SEMAPHORE_FLAG.to_string()),
                ],
                serde_json::to_vec(&record)?,
            )
            .await
            .and_then(Reply::ok)?
            .json::<bool>()?;
        if ok {
            return Ok(true);
        }
        index = 0;
    }
}

/// Watches the lock with consistent blocking reads and reports when it is no longer ours.
async fn monitor(
    client: Client,
    session: String,
    prefix: String,
    semaphore: bool,
    retries: u32,
    lost: watch::Sender<bool>,
) {
    let ctx = Ctx {
        client,
        session,
        prefix,
        limit: 0,
        verbose: false,
    };
    let mut index = 0;
    let mut failures = 0;
    loop {
        let held = if semaphore {
            read_semaphore(&ctx, index, true)
                .await
                .map(|(i, _, mut rec, live)| {
                    rec.holders.retain(|s, _| live.contains(s));
                    (i, rec.holders.contains_key(&ctx.session))
                })
        } else {
            let mut q = vec![("consistent", String::new())];
            if index > 0 {
                q.push(("index", index.to_string()));
                q.push(("wait", LOCK_WAIT.to_string()));
            }
            match ctx.client.get(&kv(&ctx.lock_key()), &q).await {
                Ok(r) if r.status == 404 || r.status.is_success() => {
                    first_pair(&r).map(|p| (r.index(), p.is_some_and(|p| p.session == ctx.session)))
                }
                Ok(r) => Err(anyhow!("reading the lock: {}", r.text())),
                Err(e) => Err(e),
            }
        };
        match held {
            Ok((i, true)) => {
                failures = 0;
                index = i;
            }
            Ok((_, false)) => {
                let _ = lost.send(true);
                return;
            }
            Err(_) if failures < retries => {
                failures += 1;
                sleep(Duration::from_secs(1)).await;
            }
            Err(_) => {
                let _ = lost.send(true);
                return;
            }
        }
    }
}

fn spawn_child(args: &[String], shell: bool, pass_stdin: bool) -> anyhow::Result<Child> {
    let mut cmd = if shell {
        let sh = std::env::var("SHELL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/bin/sh".to_string());
        let mut c = tokio::process::Command::new(sh);
        c.arg("-c").arg(args.join(" "));
        c
    } else {
        let mut c = tokio::process::Command::new(&args[0]);
        c.args(&args[1..]);
        c
    };
    cmd.env("CONSUL_LOCK_HELD", "true");
    if !pass_stdin {
        cmd.stdin(std::process::Stdio::null());
    }
    cmd.spawn()
        .map_err(|e| anyhow!("Error starting handler: {e}"))
}

/// SIGTERM, then SIGKILL after the grace period.
async fn kill_child(ctx: &Ctx, child: &mut Child) {
    let Some(pid) = child.id() else {
        ctx.say("No child process to kill");
        return;
    };
    ctx.say(format!("Terminating child pid {pid}"));
    // SAFETY: kill(2) on a pid we spawned and have not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok() {
        ctx.say("Child terminated");
        return;
    }
    ctx.say("Child did not exit after grace period of 5s");
    ctx.say(format!("Killing child pid {pid}"));
    let _ = child.kill().await;
}

async fn release_lock(ctx: &Ctx) -> anyhow::Result<()> {
    let key = ctx.lock_key();
    ctx.client
        .put(
            &kv(&key),
            &[
                ("release", ctx.session.clone()),
                ("flags", LOCK_FLAG.to_string()),
            ],
            Vec::new(),
        )
        .await
        .and_then(Reply::ok)
        .map(|_| ())
        .map_err(|e| anyhow!("failed to release lock: {e}"))
}

/// Deletes the lock key if nobody holds it, with check-and-set so a new holder is safe.
async fn cleanup_lock(ctx: &Ctx) -> anyhow::Result<()> {
    let key = ctx.lock_key();
    let reply = ctx.client.get(&kv(&key), &[]).await?;
    let Some(pair) = first_pair(&reply)? else {
        return Ok(());
    };
    if pair.flags != LOCK_FLAG {
        bail!("Existing key does not match lock use");
    }
    if !pair.session.is_empty() {
        ctx.say("Cleanup aborted, lock in use");
        return Ok(());
    }
    ctx.client
        .delete(&kv(&key), &[("cas", pair.modify_index.to_string())])
        .await
        .and_then(Reply::ok)?;
    ctx.say("Cleanup succeeded");
    Ok(())
}

async fn release_semaphore(ctx: &Ctx) -> anyhow::Result<()> {
    loop {
        let (_, lock_pair, mut record, _) = read_semaphore(ctx, 0, false).await?;
        let Some(pair) = lock_pair else { break };
        if record.holders.remove(&ctx.session).is_none() {
            break;
        }
        let ok = ctx
            .client
            .put(
                &kv(&ctx.lock_key()),
                &[
                    ("cas", pair.modify_index.to_string()),
                    ("flags", SEMAPHORE_FLAG.to_string()),
                ],
                serde_json::to_vec(&record)?,
            )
            .await
            .and_then(Reply::ok)?
            .json::<bool>()?;
        if ok {
            break;
        }
    }
    ctx.client
        .delete(&kv(&ctx.contender_key()), &[])
        .await
        .and_then(Reply::ok)
        .map(|_| ())
        .map_err(|e| anyhow!("failed to remove contender entry: {e}"))
}

async fn cleanup_semaphore(ctx: &Ctx) -> anyhow::Result<()> {
    let (_, lock_pair, mut record, live) = read_semaphore(ctx, 0, false).await?;
    let Some(pair) = lock_pair else {
        return Ok(());
    };
    record.holders.retain(|s, _| live.contains(s));
    if !record.holders.is_empty() {
        ctx.say("Cleanup aborted, lock in use");
        return Ok(());
    }
    ctx.client
        .delete(
            &kv(&ctx.lock_key()),
            &[("cas", pair.modify_index.to_string())],
        )
        .await
        .and_then(Reply::ok)?;
    ctx.say("Cleanup succeeded");
    Ok(())
}
