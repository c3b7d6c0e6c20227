//! Dashboard sessions and CSRF protection.
//!
//! A session is the cookie `SESSION_COOKIE` holding the signed-in
//! principal's API token: HttpOnly (no script reads it), SameSite=Strict (no
//! other site's page sends it), Path=/ui. Nothing is kept on the server, so
//! a session works on every replica and survives a restart; each page
//! checks the token through `GET /v1/whoami`, so a revoked token ends the
//! session on the next page (within the token cache's lifetime, 500 ms).
//! Only operator and admin tokens sign in: an agent's or a submitter's is
//! refused at sign-in and on every page.
//!
//! Every state-changing form carries `CSRF_FIELD`: the hex HMAC-SHA256 of a
//! fixed label keyed by the session token (with auth off, by a random key of
//! this process). Another site can neither read the cookie nor compute the
//! value, and every replica computes the same one. A post without it, with
//! a wrong one, or whose `Origin` is not this server's is refused 403.

use crate::ui::html::{self, e};
use crate::ui::{ApiFailure, Ui};
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::collections::HashMap;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "baton_session";
/// The hidden form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "_csrf";
/// How long a session cookie lives in the browser (12 h); the token's own
/// revocation ends it sooner.
pub const SESSION_MAX_AGE_S: u64 = 12 * 3600;
/// Bytes of a token the sign-in form accepts.
pub const TOKEN_BYTES_MAX: usize = 256;

/// The person using the dashboard.
#[derive(Debug, Clone)]
pub struct Session {
    /// The API token (none with auth off).
    pub token: Option<String>,
    /// The principal's name, as the API records it (with auth off, the
    /// operator the inbox acts as).
    pub name: String,
    pub role: String,
    pub csrf: String,
}

impl Session {
    /// Whether the dashboard runs with authentication off.
    pub fn is_dev(&self) -> bool {
        self.token.is_none()
    }
}

/// The CSRF token of a session keyed by `key` (the session's API token).
pub fn csrf_token(key: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(b"baton dashboard csrf v1");
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two strings are equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie(parts_headers: &HeaderMap) -> Option<String> {
    for value in parts_headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == SESSION_COOKIE
                && !value.is_empty()
            {
                return Some(value.to_owned());
            }
        }
    }
    None
}

/// The session cookie; `Secure` when the browser reached the server over
/// HTTPS (a TLS-terminating proxy in front), so it is never sent in clear.
fn set_cookie(token: &str, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={SESSION_MAX_AGE_S}{secure}"
    )
}

fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// A page that needs a session but has none: to the sign-in page, then back.
/// A live region's poll (htmx) is told to load the sign-in page as a whole
/// page (`HX-Redirect`), not to swap it into the region; the page to come
/// back to is then the one the region is on.
fn to_signin(parts: &Parts, why: Option<&str>) -> Response {
    let polled = parts.headers.contains_key("hx-request");
    let back = if polled {
        parts
            .headers
            .get("hx-current-url")
            .and_then(|v| v.to_str().ok())
            .and_then(|u| u.find("/ui").map(|at| u[at..].to_owned()))
            .unwrap_or_else(|| "/ui".to_owned())
    } else if parts.method == Method::GET {
        parts.uri.path_and_query().map_or("/ui", |p| p.as_str()).to_owned()
    } else {
        "/ui".to_owned()
    };
    let mut to = format!("/ui/signin?next={}", html::url(&back));
    if let Some(why) = why {
        to.push_str("&why=");
        to.push_str(why);
    }
    let mut response = if polled {
        ([("hx-redirect", to.as_str())], "").into_response()
    } else {
        Redirect::to(&to).into_response()
    };
    if why.is_some() {
        response.headers_mut().insert(header::SET_COOKIE, clear_cookie().parse().expect("a valid cookie"));
    }
    response
}

/// The principal behind `token`, if it may use the dashboard.
async fn signed_in(ui: &Ui, token: &str) -> Result<(String, String), Refusal> {
    let who: baton_api::Whoami =
        ui.call(Some(token), Method::GET, "/v1/whoami", None).await.map_err(Refusal::Api)?;
    let name = who.principal.unwrap_or_default();
    match who.role {
        Some(role @ (baton_api::Role::Operator | baton_api::Role::Admin)) => {
            Ok((name, role.as_str().to_owned()))
        }
        Some(role) => Err(Refusal::Role(name, role.as_str().to_owned())),
        None => Err(Refusal::Api(ApiFailure::internal("the API named no role"))),
    }
}

enum Refusal {
    Api(ApiFailure),
    Role(String, String),
}

impl FromRequestParts<Ui> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        if !ui.auth {
            return Ok(Session {
                token: None,
                name: crate::http::inbox::DEV_OPERATOR.to_owned(),
                role: "operator".to_owned(),
                csrf: csrf_token(&ui.dev_key),
            });
        }
        let Some(token) = cookie(&parts.headers) else { return Err(to_signin(parts, None)) };
        match signed_in(ui, &token).await {
            Ok((name, role)) => {
                Ok(Session { csrf: csrf_token(token.as_bytes()), token: Some(token), name, role })
            }
            Err(Refusal::Api(f)) if f.status == StatusCode::UNAUTHORIZED => {
                Err(to_signin(parts, Some("ended")))
            }
            Err(Refusal::Role(..)) => Err(to_signin(parts, Some("role"))),
            Err(Refusal::Api(f)) => Err(html::failure_page(&f)),
        }
    }
}

/// The refusal of a state-changing post without this session's CSRF token,
/// or from another origin; `None` lets it through.
pub fn check_post(
    session: &Session,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<Response> {
    if let Some(refused) = check_origin(headers) {
        return Some(refused);
    }
    match form.get(CSRF_FIELD) {
        Some(sent) if same(sent, &session.csrf) => None,
        _ => Some(html::refusal_page(
            StatusCode::FORBIDDEN,
            "Refused: the form carried no valid CSRF token",
            "Forms of this dashboard carry a token tied to your session. Reload the page and try again.",
        )),
    }
}

/// A post whose `Origin` (sent by browsers on every post) names another
/// site is refused; so is one a browser marks as cross-site.
fn check_origin(headers: &HeaderMap) -> Option<Response> {
    let refuse = || {
        Some(html::refusal_page(
            StatusCode::FORBIDDEN,
            "Refused: the form came from another site",
            "Only this dashboard's own pages may post its forms.",
        ))
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let ok = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
        if !ok || host.is_empty() {
            return refuse();
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return refuse();
    }
    None
}

#[derive(Debug, Deserialize)]
pub struct SigninQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    why: Option<String>,
}

/// `GET /ui/signin`.
pub async fn signin_page(State(ui): State<Ui>, Query(q): Query<SigninQuery>) -> Response {
    if !ui.auth {
        return Redirect::to("/ui").into_response();
    }
    let notice = match q.why.as_deref() {
        Some("ended") => Some("Your session ended: the token is no longer valid. Sign in again."),
        Some("role") => {
            Some("That token's principal may not use the dashboard: sign in with an operator or admin token.")
        }
        _ => None,
    };
    signin_form(StatusCode::OK, q.next.as_deref().unwrap_or("/ui"), notice, None)
}

fn signin_form(status: StatusCode, next: &str, notice: Option<&str>, error: Option<&str>) -> Response {
    let mut body = String::new();
    if let Some(n) = notice {
        body.push_str(&format!("<p class=\"flash\" role=\"status\">{}</p>", e(n)));
    }
    if let Some(err) = error {
        body.push_str(&format!("<div class=\"error\" role=\"alert\" id=\"signin-error\">{}</div>", e(err)));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/signin\" class=\"card signin\">\
         <p>Sign in with an <strong>operator</strong> or <strong>admin</strong> API token \
         (<code>baton token create --principal NAME</code>). It is kept only in an HttpOnly cookie of this browser.</p>\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required \
          placeholder=\"baton_…\" maxlength=\"{TOKEN_BYTES_MAX}\"{}>\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <button type=\"submit\">Sign in</button></form>",
        if error.is_some() { " aria-describedby=\"signin-error\" aria-invalid=\"true\"" } else { "" },
        e(next)
    ));
    (status, html::page_bare("Sign in", &body)).into_response()
}

/// `POST /ui/signin`: checks the token through the API and starts a session.
pub async fn signin(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = check_origin(&headers) {
        return refused;
    }
    let next = form.get("next").map(String::as_str).unwrap_or("/ui");
    let next = if next.starts_with("/ui") && !next.starts_with("//") { next } else { "/ui" };
    if !ui.auth {
        return Redirect::to(next).into_response();
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or("");
    if token.is_empty()
        || token.len() > TOKEN_BYTES_MAX
        || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return signin_form(
            StatusCode::UNAUTHORIZED,
            next,
            None,
            Some("That is not an API token (baton_<id>_<secret>)."),
        );
    }
    let https = headers.get(header::ORIGIN).is_some_and(|o| o.as_bytes().starts_with(b"https://"))
        || headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes() == b"https");
    match signed_in(&ui, token).await {
        Ok(_) => {
            let mut response = Redirect::to(next).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, set_cookie(token, https).parse().expect("a valid cookie"));
            response
        }
        Err(Refusal::Role(name, role)) => signin_form(
            StatusCode::FORBIDDEN,
            next,
            None,
            Some(&format!(
                "Refused: {name} is {} {role}; only operators and admins may use the dashboard.",
                if role == "agent" || role == "admin" || role == "operator" { "an" } else { "a" }
            )),
        ),
        Err(Refusal::Api(f)) if f.status == StatusCode::UNAUTHORIZED => {
            signin_form(StatusCode::UNAUTHORIZED, next, None, Some(&format!("Refused: {}.", f.message)))
        }
        Err(Refusal::Api(f)) => html::failure_page(&f),
    }
}

/// `POST /ui/signout`: forgets the session cookie.
pub async fn signout(
    session: Session,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = check_post(&session, &headers, &form) {
        return refused;
    }
    let mut response = Redirect::to(if session.is_dev() { "/ui" } else { "/ui/signin" }).into_response();
    response.headers_mut().insert(header::SET_COOKIE, clear_cookie().parse().expect("a valid cookie"));
    response
}
