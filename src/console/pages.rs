//! The console's pages, as HTML strings built from admin API answers. Every value is
//! escaped; secrets never reach a page (the API shows only hints, and the put form's secret
//! inputs are write-only password fields, never filled).

use std::fmt::Write;

use http::Method;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{call, may_change};
use crate::admin::roles::Principal;
use crate::admin::AdminState;

/// Who is looking, and the token their forms carry.
pub(crate) struct Ctx<'a> {
    pub(crate) who: &'a Principal,
    pub(crate) csrf: &'a str,
}

/// HTML-escapes text for element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one path segment or query value.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A time as "5 min ago", the exact time on hover.
fn when(ts: Option<&str>) -> String {
    let Some(ts) = ts else { return "never".into() };
    let Some(ms) = keyward_core::time::parse_rfc3339(ts) else { return esc(ts) };
    let secs = (keyward_core::time::now_millis() - ms) / 1000;
    let (n, unit, ago) = match secs.abs() {
        s if s < 60 => (s, "s", secs >= 0),
        s if s < 3600 => (s / 60, "min", secs >= 0),
        s if s < 86_400 => (s / 3600, "h", secs >= 0),
        s => (s / 86_400, "d", secs >= 0),
    };
    let rel = if ago { format!("{n} {unit} ago") } else { format!("in {n} {unit}") };
    format!("<time datetime=\"{0}\" title=\"{0}\">{rel}</time>", esc(ts))
}

fn csrf_field(ctx: &Ctx<'_>) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(ctx.csrf))
}

/// The page frame: navigation, who is logged in, logout.
pub(crate) fn layout(ctx: &Ctx<'_>, title: &str, body: String) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t} · keyward</title><link rel=\"stylesheet\" href=\"/console/static/console.css\"></head><body>\
<header><nav aria-label=\"main\"><a href=\"/console/\">Tenants</a> <a href=\"/console/audit\">Audit</a> <a href=\"/console/overview\">Overview</a></nav>\
<form class=\"who\" method=\"post\" action=\"/console/logout\">{csrf}<span>{who} ({role})</span> <button type=\"submit\">Log out</button></form></header>\
<main><h1>{t}</h1>{body}</main></body></html>",
        t = esc(title),
        csrf = csrf_field(ctx),
        who = esc(&ctx.who.actor),
        role = ctx.who.role,
    )
}

/// The login form: one field named `token` (CONTRACT.md §8.2).
pub(crate) fn login(error: Option<&str>) -> String {
    let alert = error.map(|e| format!("<p role=\"alert\" class=\"bad\">{}</p>", esc(e))).unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Log in · keyward</title><link rel=\"stylesheet\" href=\"/console/static/console.css\"></head><body><main class=\"narrow\">\
<h1>keyward console</h1>{alert}<form method=\"post\" action=\"/console/login\">\
<label for=\"token\">Admin token</label><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required autofocus>\
<button type=\"submit\">Log in</button></form><p class=\"hint\">A token from <code>keyward admin token new NAME</code>, or the admin token file's.</p></main></body></html>"
    )
}

/// Counts of one tenant's credentials, and whether its last check failed.
struct Counts {
    active: usize,
    inactive: usize,
    revoked: usize,
    failing: bool,
}

fn counts(creds: &Value) -> Counts {
    let list = creds["credentials"].as_array().cloned().unwrap_or_default();
    let of = |s: &str| list.iter().filter(|c| c["status"] == s).count();
    Counts {
        active: of("active"),
        inactive: of("inactive"),
        revoked: of("revoked"),
        failing: list.iter().any(|c| c["last_error"].is_string()),
    }
}

/// Tenants whose id starts with `prefix`, a page at a time, the failing ones first.
pub(crate) async fn tenants(state: &AdminState, ctx: &Ctx<'_>, prefix: &str, after: &str) -> String {
    const PAGE: usize = 50;
    let mut found: Vec<String> = Vec::new();
    let mut cursor = after.to_string();
    let mut more = false;
    let mut error = None;
    // The API pages in id order: read until the page is full or past the prefix.
    'pages: loop {
        let q = if cursor.is_empty() { "limit=1000".to_string() } else { format!("limit=1000&after={}", enc(&cursor)) };
        let (s, v) = call(state, ctx.who, Method::GET, &format!("/v1/tenants?{q}"), None).await;
        if s != 200 {
            error = Some(describe_error(&v));
            break;
        }
        let ids: Vec<String> =
            v["tenants"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(String::from)).collect();
        for id in &ids {
            if id.starts_with(prefix) {
                if found.len() == PAGE {
                    more = true;
                    break 'pages;
                }
                found.push(id.clone());
            } else if !prefix.is_empty() && id.as_str() > prefix {
                break 'pages;
            }
        }
        match v["next"].as_str() {
            Some(n) => cursor = n.to_string(),
            None => break,
        }
    }
    let mut rows = Vec::new();
    for t in &found {
        let (_, v) = call(state, ctx.who, Method::GET, &format!("/v1/tenants/{}/credentials", enc(t)), None).await;
        rows.push((t.clone(), counts(&v)));
    }
    rows.sort_by_key(|(t, c)| (!c.failing, t.clone()));
    let mut body = format!(
        "<form method=\"get\" action=\"/console/\" role=\"search\"><label for=\"q\">Tenant id starts with</label>\
<input id=\"q\" name=\"q\" value=\"{}\" autocomplete=\"off\"><button type=\"submit\">Search</button></form>",
        esc(prefix)
    );
    if let Some(e) = error {
        let _ = write!(body, "<p role=\"alert\" class=\"bad\">{}</p>", esc(&e));
    }
    body.push_str("<table><caption>Tenants (last check failed first)</caption><thead><tr><th scope=\"col\">Tenant</th><th scope=\"col\">Active</th><th scope=\"col\">Inactive</th><th scope=\"col\">Revoked</th><th scope=\"col\">Last check</th></tr></thead><tbody>");
    for (t, c) in &rows {
        let _ = write!(
            body,
            "<tr><td><a href=\"/console/tenants/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            enc(t),
            esc(t),
            c.active,
            c.inactive,
            c.revoked,
            if c.failing { "<span class=\"badge failed\">failed</span>" } else { "ok" }
        );
    }
    body.push_str("</tbody></table>");
    if rows.is_empty() {
        body.push_str("<p>No tenant matches.</p>");
    }
    if more {
        if let Some(last) = found.last() {
            let _ =
                write!(body, "<p><a href=\"/console/?q={}&amp;after={}\">Next page</a></p>", enc(prefix), enc(last));
        }
    }
    layout(ctx, "Tenants", body)
}

/// What an action did, shown at the top of the tenant page.
pub(crate) struct Notice {
    ok: bool,
    text: String,
    link: Option<String>,
}

fn describe_error(v: &Value) -> String {
    format!(
        "{} ({})",
        v["error"]["message"].as_str().unwrap_or("the request failed"),
        v["error"]["code"].as_str().unwrap_or("error")
    )
}

impl Notice {
    pub(crate) fn from_answer(action: &str, provider: &str, status: u16, v: &Value) -> Notice {
        if status != 200 {
            return Notice { ok: false, text: format!("{action} {provider}: {}", describe_error(v)), link: None };
        }
        match action {
            "verify" => {
                let result = v["verification"]["result"].as_str().unwrap_or("done");
                let detail = v["verification"]["detail"].as_str().map(|d| format!(" — {d}")).unwrap_or_default();
                Notice { ok: result == "valid", text: format!("Test {provider}: {result}{detail}"), link: None }
            }
            "delete" => Notice {
                ok: true,
                text: format!(
                    "Disconnected {provider}; restorable until {}",
                    v["purge_after"].as_str().unwrap_or("the retention ends")
                ),
                link: None,
            },
            "connect" => Notice {
                ok: true,
                text: "Hand this authorization link to the tenant (valid for 10 minutes):".into(),
                link: v["authorization_url"].as_str().map(String::from),
            },
            _ => Notice { ok: true, text: format!("{action} {provider}: done"), link: None },
        }
    }
}

fn badge(c: &Value) -> (&'static str, &'static str) {
    if c.get("deleted_at").is_some() {
        ("disconnected", "off")
    } else if c["status"] == "revoked" {
        ("revoked", "bad")
    } else if c["status"] == "inactive" {
        ("inactive", "off")
    } else if c["last_error"].is_string() {
        ("last check failed", "bad")
    } else if c["last_verified_at"].is_null() {
        ("never verified", "warn")
    } else {
        ("active", "good")
    }
}

/// One tenant: a card per provider, actions, and the put form.
pub(crate) async fn tenant(state: &AdminState, ctx: &Ctx<'_>, tenant: &str, notice: Option<Notice>) -> String {
    let t = enc(tenant);
    let (s, v) =
        call(state, ctx.who, Method::GET, &format!("/v1/tenants/{t}/credentials?include_deleted=true"), None).await;
    let mut body = String::new();
    if let Some(n) = notice {
        let _ = write!(
            body,
            "<div role=\"status\" class=\"notice {}\">{}",
            if n.ok { "good" } else { "bad" },
            esc(&n.text)
        );
        if let Some(l) = n.link {
            let _ = write!(body, " <a href=\"{0}\" rel=\"noreferrer\">{0}</a>", esc(&l));
        }
        body.push_str("</div>");
    }
    if s != 200 {
        let _ = write!(body, "<p role=\"alert\" class=\"bad\">{}</p>", esc(&describe_error(&v)));
        return layout(ctx, &format!("Tenant {tenant}"), body);
    }
    let change = may_change(ctx.who.role);
    body.push_str("<div class=\"cards\">");
    for c in v["credentials"].as_array().into_iter().flatten() {
        let p = c["provider"].as_str().unwrap_or("");
        let (label, class) = badge(c);
        let _ = write!(
            body,
            "<section class=\"card\" aria-labelledby=\"p-{pe}\"><h2 id=\"p-{pe}\">{pe} <span class=\"badge {class}\">{label}</span></h2><dl>\
<dt>Last verified</dt><dd>{lv}</dd><dt>Last error</dt><dd>{le}</dd><dt>Updated</dt><dd>{up}</dd>",
            pe = esc(p),
            lv = when(c["last_verified_at"].as_str()),
            le = esc(c["last_error"].as_str().unwrap_or("none")),
            up = when(c["updated_at"].as_str()),
        );
        for (k, h) in c["hints"].as_object().into_iter().flatten() {
            let _ = write!(body, "<dt>{}</dt><dd><code>{}</code></dd>", esc(k), esc(h.as_str().unwrap_or("")));
        }
        for (k, f) in c["fields"].as_object().into_iter().flatten() {
            let shown = f.as_str().map(String::from).unwrap_or_else(|| f.to_string());
            let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&shown));
        }
        if let Some(d) = c["purge_after"].as_str() {
            let _ = write!(body, "<dt>Restorable until</dt><dd>{}</dd>", when(Some(d)));
        }
        body.push_str("</dl>");
        if change {
            let base = format!("/console/tenants/{t}/credentials/{}", enc(p));
            let csrf = csrf_field(ctx);
            if c.get("deleted_at").is_some() {
                let _ = write!(body, "<form method=\"post\" action=\"{base}/restore\">{csrf}<button type=\"submit\">Restore</button></form>");
            } else {
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"{base}/verify\">{csrf}<button type=\"submit\">Test</button></form>\
<a class=\"button danger\" href=\"{base}/disconnect\">Disconnect</a>"
                );
            }
        }
        body.push_str("</section>");
    }
    body.push_str("</div>");
    let (_, routes) = call(state, ctx.who, Method::GET, &format!("/v1/tenants/{t}/routes"), None).await;
    body.push_str("<h2>Routes</h2><table><caption>Provider ids whose webhooks reach this tenant</caption><thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">Id</th></tr></thead><tbody>");
    let listed = routes["routes"].as_array().cloned().unwrap_or_default();
    for r in &listed {
        let _ = write!(
            body,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            esc(r["kind"].as_str().unwrap_or("")),
            esc(r["id"].as_str().unwrap_or(""))
        );
    }
    body.push_str("</tbody></table>");
    if listed.is_empty() {
        body.push_str("<p>No routes.</p>");
    }
    if change {
        body.push_str(&put_form(state, ctx, tenant));
        // One button per provider whose tokens come from a user's consent.
        let providers = state.creds.providers();
        for name in providers.names() {
            let connectable = providers
                .get(name)
                .and_then(|d| d.oauth())
                .is_some_and(|o| o.grant == keyward_core::providers::config::Grant::AuthorizationCode);
            if !connectable {
                continue;
            }
            let label = if name == "google" { "Google".to_string() } else { esc(name) };
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/console/tenants/{t}/connect/{n}\">{}<button type=\"submit\">Connect {label}</button></form>",
                csrf_field(ctx),
                n = enc(name),
            );
        }
    }
    layout(ctx, &format!("Tenant {tenant}"), body)
}

/// A form per provider to put a credential: secret fields are password inputs, never filled.
fn put_form(state: &AdminState, ctx: &Ctx<'_>, tenant: &str) -> String {
    let providers = state.creds.providers();
    let mut out = String::from("<h2>Put a credential</h2>");
    for name in providers.names() {
        let Some(def) = providers.get(name) else { continue };
        if def.uses_access_token() {
            continue; // Google: through Connect Google
        }
        let _ = write!(
            out,
            "<details><summary>{n}</summary><form method=\"post\" action=\"/console/tenants/{t}/put\" autocomplete=\"off\">{csrf}\
<input type=\"hidden\" name=\"provider\" value=\"{n}\">",
            n = esc(name),
            t = enc(tenant),
            csrf = csrf_field(ctx)
        );
        for f in &def.schema.fields {
            let id = format!("f-{}-{}", esc(name), esc(&f.name));
            let kind = if f.secret { "password" } else { "text" };
            let _ = write!(
                out,
                "<label for=\"{id}\">{}{}</label><input id=\"{id}\" name=\"{}\" type=\"{kind}\" autocomplete=\"off\"{}>",
                esc(&f.name),
                if f.required { "" } else { " (optional)" },
                esc(&f.name),
                if f.required { " required" } else { "" }
            );
        }
        out.push_str("<button type=\"submit\">Save</button></form></details>");
    }
    out
}

/// The JSON body of a put, from the form's fields for `provider` (list fields split on
/// commas); empty optional fields are left out.
pub(crate) fn fields_json(state: &AdminState, provider: &str, f: &[(String, Zeroizing<String>)]) -> Zeroizing<Vec<u8>> {
    let providers = state.creds.providers();
    let mut obj = serde_json::Map::new();
    if let Some(def) = providers.get(provider) {
        for d in &def.schema.fields {
            let Some(v) = f.iter().find(|(k, _)| *k == d.name).map(|(_, v)| v.as_str()) else { continue };
            if v.is_empty() {
                continue;
            }
            let value = if d.list {
                Value::Array(v.split(',').map(|s| Value::String(s.trim().to_string())).collect())
            } else {
                Value::String(v.to_string())
            };
            obj.insert(d.name.clone(), value);
        }
    }
    Zeroizing::new(serde_json::to_vec(&Value::Object(obj)).unwrap_or_default())
}

/// The confirmation before a Disconnect.
pub(crate) fn confirm_disconnect(ctx: &Ctx<'_>, tenant: &str, provider: &str) -> String {
    let body = format!(
        "<p>Disconnect <strong>{p}</strong> for tenant <strong>{t}</strong>? Its calls stop at once; the credential can be restored until the retention period ends.</p>\
<form method=\"post\" action=\"/console/tenants/{te}/credentials/{pe}/delete\">{csrf}<button type=\"submit\" class=\"danger\">Disconnect</button> \
<a href=\"/console/tenants/{te}\">Cancel</a></form>",
        p = esc(provider),
        t = esc(tenant),
        te = enc(tenant),
        pe = enc(provider),
        csrf = csrf_field(ctx)
    );
    layout(ctx, "Disconnect?", body)
}

/// The audit log, newest first, filtered; and the chain's state.
pub(crate) async fn audit(
    state: &AdminState,
    ctx: &Ctx<'_>,
    tenant: &str,
    action: &str,
    user: &str,
    result: &str,
) -> String {
    let (_, chain) = call(state, ctx.who, Method::GET, "/v1/audit/verify", None).await;
    let mut entries: Vec<Value> = Vec::new();
    let mut after = 0u64;
    loop {
        let (s, v) = call(state, ctx.who, Method::GET, &format!("/v1/audit?after={after}&limit=1000"), None).await;
        let page = v["entries"].as_array().cloned().unwrap_or_default();
        if s != 200 || page.is_empty() {
            break;
        }
        after = page.last().and_then(|e| e["seq"].as_u64()).unwrap_or(after);
        entries.extend(page.into_iter().filter(|e| {
            (tenant.is_empty() || e["tenant"] == tenant)
                && (action.is_empty() || e["action"].as_str().is_some_and(|a| a.starts_with(action)))
                && (user.is_empty() || e["actor"] == user)
                && (result.is_empty() || e["result"].as_str().is_some_and(|r| r.starts_with(result)))
        }));
    }
    let ok = chain["ok"].as_bool() == Some(true);
    let mut body = format!(
        "<p class=\"notice {}\" role=\"status\">Audit chain: {}</p>",
        if ok { "good" } else { "bad" },
        if ok {
            format!("verified, {} entries", chain["entries"])
        } else {
            format!("BROKEN at entry {}: {}", chain["first_bad_seq"], esc(chain["problem"].as_str().unwrap_or("")))
        }
    );
    let input = |id: &str, label: &str, v: &str| {
        format!(
            "<label for=\"{id}\">{label}</label><input id=\"{id}\" name=\"{id}\" value=\"{}\" autocomplete=\"off\">",
            esc(v)
        )
    };
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/console/audit\" class=\"filters\">{}{}{}{}<button type=\"submit\">Filter</button></form>",
        input("tenant", "Tenant", tenant),
        input("action", "Action", action),
        input("user", "User", user),
        input("result", "Result", result)
    );
    body.push_str("<table><caption>Newest first (at most 200)</caption><thead><tr><th scope=\"col\">#</th><th scope=\"col\">When</th><th scope=\"col\">User</th><th scope=\"col\">Action</th><th scope=\"col\">Tenant</th><th scope=\"col\">Provider</th><th scope=\"col\">Result</th></tr></thead><tbody>");
    for e in entries.iter().rev().take(200) {
        let ts = e["ts"].as_i64().map(keyward_core::time::rfc3339);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e["seq"],
            when(ts.as_deref()),
            esc(e["actor"].as_str().unwrap_or("")),
            esc(e["action"].as_str().unwrap_or("")),
            esc(e["tenant"].as_str().unwrap_or("")),
            esc(e["provider"].as_str().unwrap_or("")),
            esc(e["result"].as_str().unwrap_or(""))
        );
    }
    body.push_str("</tbody></table>");
    layout(ctx, "Audit log", body)
}

/// The daemon's own counters at a glance.
pub(crate) async fn overview(state: &AdminState, ctx: &Ctx<'_>) -> String {
    use std::collections::BTreeMap;
    let (_, v) = call(state, ctx.who, Method::GET, "/v1/stats", None).await;
    let counters = v["counters"].as_array().cloned().unwrap_or_default();
    let label = |c: &Value, k: &str| c["labels"][k].as_str().unwrap_or("").to_string();
    let mut per_provider: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut rejections: BTreeMap<(String, String), f64> = BTreeMap::new();
    let (mut hits, mut misses, mut refreshes) = (0.0, 0.0, 0.0);
    for c in &counters {
        let n = c["value"].as_f64().unwrap_or(0.0);
        match c["name"].as_str().unwrap_or("") {
            "keyward_proxy_requests_total" => {
                let e = per_provider.entry(label(c, "provider")).or_default();
                e.0 += n;
                if !label(c, "error").is_empty() {
                    e.1 += n;
                }
            }
            "keyward_webhook_verifications_total" if label(c, "result") != "verified" => {
                *rejections.entry((label(c, "provider"), label(c, "reason"))).or_default() += n;
            }
            "keyward_credential_cache_hits_total" => hits += n,
            "keyward_credential_cache_misses_total" => misses += n,
            "keyward_google_token_refreshes_total" => refreshes += n,
            _ => {}
        }
    }
    let rate =
        if hits + misses > 0.0 { format!("{:.1} %", 100.0 * hits / (hits + misses)) } else { "no lookups yet".into() };
    let mut body = format!(
        "<dl><dt>Credential cache hit rate</dt><dd>{rate} ({hits:.0} hits, {misses:.0} misses)</dd><dt>Google token refreshes</dt><dd>{refreshes:.0}</dd></dl>"
    );
    body.push_str("<table><caption>Outbound requests per provider</caption><thead><tr><th scope=\"col\">Provider</th><th scope=\"col\">Requests</th><th scope=\"col\">Errors</th></tr></thead><tbody>");
    for (p, (n, e)) in &per_provider {
        let _ = write!(body, "<tr><td>{}</td><td>{n:.0}</td><td>{e:.0}</td></tr>", esc(p));
    }
    body.push_str("</tbody></table><table><caption>Webhook rejections by reason</caption><thead><tr><th scope=\"col\">Provider</th><th scope=\"col\">Reason</th><th scope=\"col\">Count</th></tr></thead><tbody>");
    for ((p, r), n) in &rejections {
        let _ = write!(body, "<tr><td>{}</td><td>{}</td><td>{n:.0}</td></tr>", esc(p), esc(r));
    }
    body.push_str("</tbody></table>");
    layout(ctx, "Overview", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(esc("<script>\"x\"&'y'"), "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;");
    }

    #[test]
    fn times_read_relative_with_the_exact_time_on_hover() {
        let ts = keyward_core::time::rfc3339(keyward_core::time::now_millis() - 5 * 60_000);
        let w = when(Some(&ts));
        assert!(w.contains("5 min ago") && w.contains(&format!("title=\"{ts}\"")), "{w}");
        assert_eq!(when(None), "never");
    }
}
