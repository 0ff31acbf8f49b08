//! The web console at `/console/` on the admin TCP listener (CONTRACT.md §8.2), off unless
//! `[admin] console = true`. Pages are rendered here as plain HTML with no script at all
//! (so the Content-Security-Policy allows none), from answers of the same admin API the CLI
//! uses ([`crate::admin::api`]), under the logged-in user's role: the console can do nothing
//! the API cannot.
//!
//! Sessions are HttpOnly, SameSite=Strict cookies (Secure over TLS) with idle and absolute
//! deadlines; every POST carries the session's CSRF token and a same-origin `Origin`.

mod pages;
pub(crate) mod session;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::admin::roles::{principal_for_token, Principal, Role};
use crate::admin::{AdminBody, AdminState};
use session::Sessions;

/// The console's state beside the admin API's.
#[derive(Debug, Default)]
pub(crate) struct Console {
    pub(crate) sessions: Sessions,
    /// Whether the listener speaks TLS (the cookie is `Secure` then).
    pub(crate) tls: bool,
}

const COOKIE: &str = "kw_console";
const CSS: &str = include_str!("console.css");
/// No script, no third-party origin, no framing; forms post only back here.
const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const MAX_FORM: u64 = 64 * 1024;

/// Whether a request is the console's.
pub(crate) fn is_console(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not no-referrer: under it browsers send `Origin: null` with forms, and the Origin check needs the origin.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/html; charset=utf-8", body)
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Full<Bytes>> {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

fn cookie_of(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';').map(str::trim).find_map(|kv| kv.strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')))
        })
        .map(str::to_string)
}

impl Console {
    fn set_cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.tls { "; Secure" } else { "" };
        format!("{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }
}

/// A POST must come from a page of this origin: `Origin` names the host the request was
/// sent to (and `Sec-Fetch-Site`, when sent, says same-origin).
fn same_origin(req: &Request<Incoming>) -> bool {
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let fetch_site_ok =
        req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_none_or(|s| s == "same-origin");
    match (host, origin) {
        (Some(h), Some(o)) => {
            let o = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://")).unwrap_or("");
            fetch_site_ok && o == h
        }
        _ => false,
    }
}

/// A form body as name → value (values zeroized when dropped).
async fn form(req: Request<Incoming>) -> Result<Vec<(String, Zeroizing<String>)>, String> {
    let body = crate::http::read_body(req, MAX_FORM).await.map_err(|e| e.to_string())?;
    Ok(url::form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned()))).collect())
}

fn field<'a>(f: &'a [(String, Zeroizing<String>)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// One admin API call as `who`, through the same entry the API listener uses.
pub(crate) async fn call(
    state: &AdminState,
    who: &Principal,
    method: Method,
    path: &str,
    body: Option<Zeroizing<Vec<u8>>>,
) -> (u16, Value) {
    let bytes = body.map(|b| Bytes::copy_from_slice(&b)).unwrap_or_default();
    let body: AdminBody = Full::new(bytes).map_err(|never| match never {}).boxed_unsync();
    let req = match Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
    {
        Ok(r) => r,
        Err(_) => {
            return (
                400,
                serde_json::json!({"error": {"code": "bad_request", "message": "a path the console could not build"}}),
            )
        }
    };
    let (resp, _) = crate::admin::api(state, who, req).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Serves one console request (and logs it as the admin listener logs its requests).
pub(crate) async fn handle(
    state: &AdminState,
    console: &Console,
    peer_ip: std::net::IpAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let resp = serve(state, console, peer_ip, req).await;
    tracing::info!(
        listener = "admin",
        method = %method,
        route = "console",
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "admin request"
    );
    resp
}

async fn serve(
    state: &AdminState,
    console: &Console,
    peer_ip: std::net::IpAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/console/static/console.css" {
        return respond(StatusCode::OK, "text/css; charset=utf-8", CSS);
    }
    if path == "/console/login" {
        return match method {
            Method::GET => html(StatusCode::OK, pages::login(None)),
            Method::POST if !same_origin(&req) => html(
                StatusCode::FORBIDDEN,
                pages::login(Some("refused: the form did not come from this console (Origin)")),
            ),
            Method::POST => {
                let f = match form(req).await {
                    Ok(f) => f,
                    Err(e) => return html(StatusCode::BAD_REQUEST, pages::login(Some(&e))),
                };
                let who = field(&f, "token")
                    .and_then(|t| principal_for_token(t.trim(), &state.users, state.token_digest.as_ref(), peer_ip));
                match who {
                    Some(who) => {
                        tracing::info!(actor = %who.actor, role = %who.role, "console login");
                        match console.sessions.create(who) {
                            Some(c) => redirect("/console/", Some(console.set_cookie(&c, session::ABSOLUTE.as_secs()))),
                            None => html(
                                StatusCode::SERVICE_UNAVAILABLE,
                                pages::login(Some("no session could be made; try again")),
                            ),
                        }
                    }
                    None => {
                        tracing::warn!(ip = %peer_ip, "console login refused");
                        html(StatusCode::UNAUTHORIZED, pages::login(Some("that token is not valid")))
                    }
                }
            }
            _ => html(StatusCode::METHOD_NOT_ALLOWED, pages::login(None)),
        };
    }
    let Some(cookie) = cookie_of(&req) else { return redirect("/console/login", None) };
    let Some((who, csrf)) = console.sessions.get(&cookie) else {
        return redirect("/console/login", Some(console.set_cookie("", 0)));
    };
    let ctx = pages::Ctx { who: &who, csrf: &csrf };
    if method == Method::GET {
        let q: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or("");
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
        return match segs.as_slice() {
            [] => html(StatusCode::OK, pages::tenants(state, &ctx, get("q"), get("after")).await),
            ["tenants", t] => html(StatusCode::OK, pages::tenant(state, &ctx, t, None).await),
            ["tenants", t, "credentials", p, "disconnect"] => {
                html(StatusCode::OK, pages::confirm_disconnect(&ctx, t, p))
            }
            ["overview"] => html(StatusCode::OK, pages::overview(state, &ctx).await),
            ["audit"] => html(
                StatusCode::OK,
                pages::audit(state, &ctx, get("tenant"), get("action"), get("user"), get("result")).await,
            ),
            _ => html(
                StatusCode::NOT_FOUND,
                pages::layout(&ctx, "Not found", "<p>There is no console page here.</p>".into()),
            ),
        };
    }
    if method != Method::POST {
        return html(StatusCode::METHOD_NOT_ALLOWED, pages::layout(&ctx, "Not allowed", String::new()));
    }
    // Every mutation: same origin, and this session's CSRF token.
    if !same_origin(&req) {
        return html(
            StatusCode::FORBIDDEN,
            pages::layout(
                &ctx,
                "Refused",
                "<p role=\"alert\">Refused: the form did not come from this console (Origin).</p>".into(),
            ),
        );
    }
    let f = match form(req).await {
        Ok(f) => f,
        Err(e) => {
            return html(
                StatusCode::BAD_REQUEST,
                pages::layout(&ctx, "Refused", format!("<p role=\"alert\">{}</p>", pages::esc(&e))),
            )
        }
    };
    let given = field(&f, "csrf").unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), csrf.as_bytes())) {
        return html(
            StatusCode::FORBIDDEN,
            pages::layout(
                &ctx,
                "Refused",
                "<p role=\"alert\">Refused: the form's CSRF token is missing or stale; reload the page.</p>".into(),
            ),
        );
    }
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    match segs.as_slice() {
        ["logout"] => {
            console.sessions.remove(&cookie);
            redirect("/console/login", Some(console.set_cookie("", 0)))
        }
        ["tenants", t, "credentials", p, action] => {
            let (m, api) = match *action {
                "verify" => (Method::POST, format!("/v1/tenants/{t}/credentials/{p}/verify")),
                "restore" => (Method::POST, format!("/v1/tenants/{t}/credentials/{p}/restore")),
                "delete" => (Method::DELETE, format!("/v1/tenants/{t}/credentials/{p}")),
                _ => return html(StatusCode::NOT_FOUND, pages::layout(&ctx, "Not found", String::new())),
            };
            let (s, v) = call(state, &who, m, &api, None).await;
            let notice = pages::Notice::from_answer(action, p, s, &v);
            html(StatusCode::OK, pages::tenant(state, &ctx, t, Some(notice)).await)
        }
        ["tenants", t, "put"] => {
            let provider = field(&f, "provider").unwrap_or("").to_string();
            let body = pages::fields_json(state, &provider, &f);
            let (s, v) =
                call(state, &who, Method::PUT, &format!("/v1/tenants/{t}/credentials/{provider}"), Some(body)).await;
            let notice = pages::Notice::from_answer("put", &provider, s, &v);
            html(StatusCode::OK, pages::tenant(state, &ctx, t, Some(notice)).await)
        }
        ["tenants", t, "connect", p] => {
            let (s, v) = call(state, &who, Method::POST, &format!("/v1/tenants/{t}/oauth/{p}/start"), None).await;
            let notice = pages::Notice::from_answer("connect", p, s, &v);
            html(StatusCode::OK, pages::tenant(state, &ctx, t, Some(notice)).await)
        }
        _ => html(StatusCode::NOT_FOUND, pages::layout(&ctx, "Not found", String::new())),
    }
}

/// Whether a role sees buttons that change things.
fn may_change(role: Role) -> bool {
    role >= Role::Operator
}
