//! Provisions a Vapi assistant idempotently through keyward: look it up by name, then
//! create or update it. Running it twice leaves one assistant. The app never holds the Vapi
//! key: keyward injects the tenant's credential.
//!
//! ```text
//! cargo run --example provision_vapi -- --socket /run/keyward/app.sock --tenant acme \
//!     --name "Front desk" --first-message "Hello, how can I help?"
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// One JSON call to Vapi through keyward's Unix socket (form 1: provider in the path,
/// tenant in Keyward-Tenant).
async fn call(
    socket: &str,
    tenant: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let stream =
        tokio::net::UnixStream::connect(socket).await.map_err(|e| format!("cannot reach keyward at {socket}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("/vapi{path}"))
        .header("host", "keyward")
        .header("keyward-tenant", tenant)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Some(code) = v["error"]["code"].as_str() {
        return Err(format!("keyward refused the call: {code}: {}", v["error"]["message"].as_str().unwrap_or("")));
    }
    Ok((status, v))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 1 {
        // No arguments (also how `cargo test --all-targets` runs examples): show usage.
        eprintln!(
            "usage: provision_vapi --socket /run/keyward/app.sock --tenant TENANT --name NAME [--first-message TEXT]"
        );
        return;
    }
    let socket = arg(&args, "--socket").unwrap_or_else(|| "/run/keyward/app.sock".into());
    let (Some(tenant), Some(name)) = (arg(&args, "--tenant"), arg(&args, "--name")) else {
        eprintln!("provision_vapi: --tenant and --name are required");
        std::process::exit(2);
    };
    let first = arg(&args, "--first-message").unwrap_or_else(|| "Hello!".into());
    let config = json!({"name": name, "firstMessage": first, "model": {"provider": "openai", "model": "gpt-4o"}});

    let result = async {
        let (status, list) = call(&socket, &tenant, "GET", "/assistant?limit=1000", None).await?;
        if status != 200 {
            return Err(format!("listing assistants failed: HTTP {status}"));
        }
        let existing = list
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name.as_str()))
            .and_then(|x| x["id"].as_str())
            .map(str::to_string);
        let (action, (status, body)) = match existing {
            Some(id) => ("updated", call(&socket, &tenant, "PATCH", &format!("/assistant/{id}"), Some(config)).await?),
            None => ("created", call(&socket, &tenant, "POST", "/assistant", Some(config)).await?),
        };
        if !(200..300).contains(&status) {
            return Err(format!("{action} failed: HTTP {status}"));
        }
        Ok(json!({"id": body["id"], "action": action}))
    }
    .await;
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("provision_vapi: {e}");
            std::process::exit(1);
        }
    }
}
