//! End-to-end: `keyward audit tail --follow` streams audit entries as they are committed
//! (the daemon holds the request until the next commit, so a missed wake-up would show as a
//! 20 s stall, longer than this test waits), resumes after the last entry it printed when
//! the daemon is killed and restarted, does not hold up a shutdown, and `--after SEQ`
//! starts where asked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The next entry the follower printed for `tenant`, skipping others.
fn next_for(rx: &mpsc::Receiver<Value>, tenant: &str, seen: &mut Vec<u64>) -> Value {
    loop {
        let e =
            rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("no entry for {tenant} within 10 s"));
        seen.push(e["seq"].as_u64().unwrap());
        if e["tenant"] == tenant {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_follow_streams_commits_and_resumes_across_a_daemon_restart() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    put_vapi(&d, "acme", "CANARYauditTail0000000000000001").await;
    let (_, v) = d.admin("GET", "/v1/audit?limit=0", None).await;
    let head = v["head"].as_u64().unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--admin")
        .arg(&d.admin_sock)
        .args(["audit", "tail", "--follow", "--json", "--after", &head.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // Give the follower time to be waiting inside the daemon before the commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    put_vapi(&d, "globex", "CANARYauditTail0000000000000002").await;
    let e = next_for(&rx, "globex", &mut seen);
    assert_eq!(e["action"], "credential.put");

    // The daemon dies mid-wait and comes back on the same store: the follower resumes
    // after the last entry it printed, nothing lost, nothing twice.
    d.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.start();
    put_vapi(&d, "initech", "CANARYauditTail0000000000000003").await;
    next_for(&rx, "initech", &mut seen);
    let expected: Vec<u64> = (head + 1..=*seen.last().unwrap()).collect();
    assert_eq!(seen, expected, "every entry once, in order");
    // A follower waiting inside the daemon does not hold up its shutdown (its request
    // waits up to 20 s otherwise).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    assert_eq!(d.stop(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(10), "the drain waited {:?} for the follower", t.elapsed());
    d.start();
    let _ = child.kill();
    let _ = child.wait();

    // --after SEQ without --follow: exactly the entries after it.
    let out = d.cli(&["audit", "tail", "--json", "--after", &head.to_string(), "--limit", "100"], None);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), expected);
    assert_eq!(canary_hits(&out.stdout, &["CANARYauditTail0000000000000002"]), 0);
}
