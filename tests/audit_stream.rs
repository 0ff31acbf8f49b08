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

/// Truncates the chain to its first `keep` entries, head included, as a writer of the
/// store's directory would (keyward stopped).
async fn truncate_chain(store: &std::path::Path, keep: u64) {
    let db = keyward::store::SledStore::open(store).unwrap();
    let audit = db.raw_tree("audit").unwrap();
    let mut last = None;
    for row in audit.iter() {
        let (k, v) = row.unwrap();
        let e: Value = serde_json::from_slice(&v).unwrap();
        if e["seq"].as_u64().unwrap() > keep {
            audit.remove(k).unwrap();
        } else {
            last = Some(e);
        }
    }
    let last = last.unwrap();
    let head = serde_json::json!({"seq": last["seq"], "hash": last["hash"]});
    db.raw_tree("meta").unwrap().insert("audit_head", serde_json::to_vec(&head).unwrap()).unwrap();
    db.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_travel_with_the_stream_and_expose_a_truncated_chain() {
    let mut d = Daemon::new(DaemonConfig {
        extra: "[telemetry]\naudit_checkpoint_interval = \"1s\"\n".into(),
        ..DaemonConfig::default()
    });
    d.start();
    put_vapi(&d, "acme", "CANARYauditCheckpoint00000000001").await;
    // The loop records one once the head moved, as an audit entry and a log line.
    let mut entry = None;
    for _ in 0..50 {
        let (_, v) = d.admin("GET", "/v1/audit?limit=1000", None).await;
        entry = v["entries"].as_array().unwrap().iter().find(|e| e["action"] == "audit.checkpoint").cloned();
        if entry.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entry = entry.expect("no checkpoint entry within 5 s");
    let recorded: Value = serde_json::from_str(entry["target"].as_str().unwrap()).unwrap();
    assert_eq!(recorded["seq"].as_u64(), Some(entry["seq"].as_u64().unwrap() - 1), "it signs the head before it");
    // The daemon logs the checkpoint after committing its entry: the line may trail it.
    let logged = |d: &Daemon| {
        d.logs().contains("audit checkpoint") && d.logs().contains(recorded["signature"].as_str().unwrap())
    };
    for _ in 0..50 {
        if logged(&d) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged(&d));
    // Nothing new: no more checkpoints.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, v) = d.admin("GET", "/v1/audit?limit=1000", None).await;
    let count = v["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "audit.checkpoint").count();
    assert_eq!(count, 1, "an idle chain is not checkpointed again");

    // What an operator keeps off the host: the CLI's checkpoint of the head (the
    // checkpoint entry itself) and the stream's JSON lines.
    let out = d.cli(&["audit", "checkpoint"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kept = d.dir.join("checkpoint.json");
    std::fs::write(&kept, &out.stdout).unwrap();
    let head: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(head["seq"], entry["seq"]);
    let stream = d.dir.join("stream.jsonl");
    let tail = d.cli(&["audit", "tail", "--json", "--after", "0", "--limit", "1000"], None);
    std::fs::write(&stream, &tail.stdout).unwrap();
    for file in [&kept, &stream] {
        let ok = d.cli(&["audit", "verify", "--checkpoint", file.to_str().unwrap()], None);
        let text = String::from_utf8_lossy(&ok.stdout).to_string();
        assert!(ok.status.success() && text.contains("the chain extends it"), "{text}");
    }
    // A checkpoint edited to claim a longer chain: the signature fails.
    let mut forged = head.clone();
    forged["seq"] = (head["seq"].as_u64().unwrap() + 5).into();
    let forged_file = d.dir.join("forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let bad = d.cli(&["audit", "verify", "--checkpoint", forged_file.to_str().unwrap()], None);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stdout).contains("signature does not verify"));

    // The writer drops the last entry (the checkpoint: nothing refers to it) and moves the
    // head back. The chain alone still verifies; the kept checkpoint does not.
    d.stop();
    truncate_chain(&d.store_path(), head["seq"].as_u64().unwrap() - 1).await;
    d.config.extra = "[telemetry]\naudit_checkpoint_interval = \"0s\"\n".into();
    d.write_config();
    d.start();
    let plain = d.cli(&["audit", "verify"], None);
    assert!(plain.status.success(), "a truncation at a quiet point passes the chain check alone");
    let caught = d.cli(&["audit", "verify", "--checkpoint", kept.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&caught.stdout).to_string();
    assert!(!caught.status.success() && text.contains("truncated"), "{text}");
}
