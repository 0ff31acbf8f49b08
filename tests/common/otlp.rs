//! An OTLP/HTTP trace receiver (tests/otlp_receiver.py, on PyPI's opentelemetry-proto, which
//! scripts/ci-deps installs) and helpers to read the spans it decoded.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

pub struct Receiver {
    child: Child,
    pub port: u16,
    out: std::path::PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts the receiver, or says why the test is skipped and gives `None`.
    pub fn start(dir: &Path) -> Option<Receiver> {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/otlp-venv/bin/python");
        if !python.exists() {
            eprintln!("SKIPPED: trace tests need the OTLP decoder's opentelemetry-proto (run scripts/ci-deps)");
            return None;
        }
        let port_file = dir.join("otlp.port");
        let out = dir.join("spans.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp_receiver.py");
        let child = Command::new(&python).arg(script).arg(&port_file).arg(&out).spawn().unwrap();
        let mut r = Receiver { child, port: 0, out };
        for _ in 0..100 {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                r.port = p.trim().parse().unwrap();
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the OTLP receiver did not start");
    }

    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn raw(&self) -> Vec<u8> {
        std::fs::read(self.out.with_extension("jsonl.raw")).unwrap_or_default()
    }
}

pub fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

pub fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

pub fn child_of<'a>(spans: &'a [Value], parent: &Value, name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name && s["parent_span_id"] == parent["span_id"] && s["trace_id"] == parent["trace_id"])
        .unwrap_or_else(|| panic!("no {name} under {parent}"))
}

pub async fn wait_for(r: &Receiver, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let s = r.spans();
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.spans()
}
