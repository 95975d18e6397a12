//! `cairn lock` as users run it: two holders of one lock take turns; invalidating the
//! holder's session kills its child and frees the lock after the lock-delay; `-n` makes a
//! semaphore.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::{Agent, eventually};
use serde_json::Value;

fn log_path(agent: &Agent, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cairn-lock-{}-{name}.log", agent.http.port()))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn lock(agent: &Agent, args: &[&str], script: &str) -> Child {
    agent
        .cli()
        .arg("lock")
        .args(args)
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    eventually(within, "lock process to exit", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn second_holder_waits_for_the_first() {
    let agent = Agent::dev().await.unwrap();
    let log = log_path(&agent, "turns");
    let _ = std::fs::remove_file(&log);
    let l = log.display();
    let mut a = lock(
        &agent,
        &["locks/x"],
        &format!("echo A $CONSUL_LOCK_HELD >> {l}; sleep 5; echo A-done >> {l}"),
    );
    eventually(Duration::from_secs(10), "A to hold the lock", || async {
        (!lines(&log).is_empty()).then_some(())
    })
    .await
    .unwrap();
    let mut b = lock(&agent, &["locks/x"], &format!("echo B >> {l}"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lines(&log), ["A true"], "B ran while A held the lock");
    assert!(wait_exit(&mut a, Duration::from_secs(15)).await.success());
    assert!(wait_exit(&mut b, Duration::from_secs(15)).await.success());
    assert_eq!(lines(&log), ["A true", "A-done", "B"]);
    // Both cleaned up: the lock key is gone.
    let r = cairn_tests::http_client()
        .get(agent.url("/v1/kv/locks/x/.lock"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    std::fs::remove_file(&log).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_holders_session_frees_the_lock_after_lock_delay() {
    let agent = Agent::dev().await.unwrap();
    let log = log_path(&agent, "kill");
    let _ = std::fs::remove_file(&log);
    let l = log.display();
    let mut a = lock(&agent, &["locks/y"], &format!("echo A >> {l}; sleep 120"));
    eventually(Duration::from_secs(10), "A to hold the lock", || async {
        (!lines(&log).is_empty()).then_some(())
    })
    .await
    .unwrap();
    let mut b = lock(&agent, &["locks/y"], &format!("echo B >> {l}"));
    let http = cairn_tests::http_client();
    let held: Value = http
        .get(agent.url("/v1/kv/locks/y/.lock"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(held[0]["Flags"], 0x2ddc_cbc0_58a5_0c18u64);
    let session = held[0]["Session"].as_str().unwrap().to_string();

    http.put(agent.url(&format!("/v1/session/destroy/{session}")))
        .send()
        .await
        .unwrap();
    let killed = Instant::now();
    // A notices the loss, terminates its child and exits.
    let status = wait_exit(&mut a, Duration::from_secs(10)).await;
    println!(
        "holder exited {:?} after its session was destroyed: {status}",
        killed.elapsed()
    );
    eventually(Duration::from_secs(40), "B to take the lock", || async {
        lines(&log).contains(&"B".to_string()).then_some(())
    })
    .await
    .unwrap();
    let waited = killed.elapsed();
    println!("second holder acquired {waited:?} after the first session was destroyed");
    assert!(
        waited >= Duration::from_secs(15),
        "lock-delay (15s) not honoured: {waited:?}"
    );
    assert!(wait_exit(&mut b, Duration::from_secs(10)).await.success());
    assert_eq!(lines(&log), ["A", "B"]);
    std::fs::remove_file(&log).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn semaphore_admits_n_holders() {
    let agent = Agent::dev().await.unwrap();
    let log = log_path(&agent, "sem");
    let _ = std::fs::remove_file(&log);
    let l = log.display();
    let script = |name: &str| format!("echo {name}-in >> {l}; sleep 3; echo {name}-out >> {l}");
    let mut holders: Vec<Child> = ["one", "two", "three"]
        .iter()
        .map(|n| lock(&agent, &["-n", "2", "sem/pool"], &script(n)))
        .collect();
    for h in &mut holders {
        assert!(wait_exit(h, Duration::from_secs(30)).await.success());
    }
    // Never more than two inside at once, and two did overlap.
    let mut inside = 0;
    let mut peak = 0;
    for line in lines(&log) {
        if line.ends_with("-in") {
            inside += 1;
        } else {
            inside -= 1;
        }
        peak = peak.max(inside);
    }
    assert_eq!(peak, 2, "{:?}", lines(&log));
    let r = cairn_tests::http_client()
        .get(agent.url("/v1/kv/sem/pool/?recurse"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "semaphore keys are cleaned up");
    std::fs::remove_file(&log).unwrap();
}
