//! HTML building blocks: escaping (`e`, every text that reaches a page goes
//! through it), URL encoding, the page frame (navigation, skip link, the
//! signed-in principal, sign-out) and refusal pages. Pages are plain
//! strings built by functions: no template engine, so nothing is compiled
//! from a second language and escaping happens in one place.

use crate::ui::ApiFailure;
use crate::ui::session::{CSRF_FIELD, Session};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use std::fmt;

/// Text escaped for HTML content and attribute values.
pub struct Esc<'a>(&'a str);

/// Escapes `text` for HTML.
pub fn e(text: &str) -> Esc<'_> {
    Esc(text)
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, c) in self.0.char_indices() {
            let with = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(with)?;
            last = i + c.len_utf8();
        }
        f.write_str(&self.0[last..])
    }
}

/// Percent-encodes `text` for a URL's path segment or query value.
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The navigation: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/ui", "Overview"),
    ("/ui/inbox", "Inbox"),
    ("/ui/stuck", "Stuck"),
    ("/ui/edges", "Edges"),
    ("/ui/workflows", "Workflows"),
    ("/ui/alerts", "Alerts"),
    ("/ui/webhooks", "Webhooks"),
];

/// What a page needs besides its body.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The navigation entry this page belongs to.
    pub nav: &'a str,
    pub session: &'a Session,
    /// Load uPlot (chart pages).
    pub charts: bool,
}

/// A whole page.
pub fn page(frame: Frame<'_>, body: &str) -> Html<String> {
    let mut nav = String::new();
    for (path, label) in NAV {
        let current = if *path == frame.nav { " aria-current=\"page\"" } else { "" };
        nav.push_str(&format!("<li><a href=\"{path}\"{current}>{label}</a></li>"));
    }
    let who = if frame.session.is_dev() {
        "<span class=\"who\">authentication off (<code>baton dev</code>): acting as <strong>operator</strong></span>"
            .to_owned()
    } else {
        format!(
            "<span class=\"who\">Signed in as <strong>{}</strong> ({})</span>\
             <form method=\"post\" action=\"/ui/signout\" class=\"inline\">{}<button type=\"submit\" class=\"link\">Sign out</button></form>",
            e(&frame.session.name),
            e(&frame.session.role),
            csrf_input(frame.session)
        )
    };
    let charts = if frame.charts {
        "<link rel=\"stylesheet\" href=\"/ui/static/uPlot.min.css\"><script src=\"/ui/static/uPlot.iife.min.js\" defer></script>"
    } else {
        ""
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"htmx-config\" content='{{\"includeIndicatorStyles\":false,\"allowEval\":false}}'>\
         <title>{title} · Baton</title><link rel=\"stylesheet\" href=\"/ui/static/app.css\">{charts}\
         <script src=\"/ui/static/htmx.min.js\" defer></script><script src=\"/ui/static/app.js\" defer></script>\
         </head><body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><nav aria-label=\"Main\"><a class=\"brand\" href=\"/ui\">Baton</a><ul>{nav}</ul></nav>\
         <div class=\"session\">{who}</div></header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{title}</h1>{body}</main></body></html>",
        title = e(frame.title),
    ))
}

/// A page with no navigation (sign-in, refusals before a session exists).
pub fn page_bare(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Baton</title><link rel=\"stylesheet\" href=\"/ui/static/app.css\"></head>\
         <body><header><nav aria-label=\"Main\"><a class=\"brand\" href=\"/ui\">Baton</a></nav></header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{title}</h1>{body}</main></body></html>",
        title = e(title)
    ))
}

/// A refusal with its status, a title and what to do.
pub fn refusal_page(status: StatusCode, title: &str, what: &str) -> Response {
    let body = format!(
        "<div class=\"error\" role=\"alert\"><p>{}</p></div><p><a href=\"/ui\">Back to the overview</a></p>",
        e(what)
    );
    (status, page_bare(title, &body)).into_response()
}

/// An API call that failed, shown with the API's status, code and message.
pub fn failure_page(f: &ApiFailure) -> Response {
    let body = failure_box(f);
    (
        f.status,
        page_bare("The API refused", &format!("{body}<p><a href=\"/ui\">Back to the overview</a></p>")),
    )
        .into_response()
}

/// The API's refusal, as a box inside a page.
pub fn failure_box(f: &ApiFailure) -> String {
    format!(
        "<div class=\"error\" role=\"alert\"><p><strong>{} {}</strong>: {}</p></div>",
        f.status.as_u16(),
        e(&f.code),
        e(&f.message)
    )
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf_input(session: &Session) -> String {
    format!("<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{}\">", e(&session.csrf))
}

/// A duration in milliseconds, as people read it (`850 ms`, `12.5 s`, `3m 20s`, `2h 5m`, `3d 4h`).
pub fn dur(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => two(ms / 60_000, "m", ms % 60_000 / 1000, "s"),
        3_600_000..86_400_000 => two(ms / 3_600_000, "h", ms % 3_600_000 / 60_000, "m"),
        _ => two(ms / 86_400_000, "d", ms % 86_400_000 / 3_600_000, "h"),
    }
}

/// `3m 20s`, or `3m` when the smaller part is 0.
fn two(big: i64, big_unit: &str, small: i64, small_unit: &str) -> String {
    if small == 0 { format!("{big}{big_unit}") } else { format!("{big}{big_unit} {small}{small_unit}") }
}

/// A time, with how long ago (or from now) it is, in a `<time>` element.
pub fn when(at: baton_api::Timestamp, now: i64) -> String {
    let delta = now - at.0;
    let rel = if delta >= 0 { format!("{} ago", dur(delta)) } else { format!("in {}", dur(-delta)) };
    format!("<time datetime=\"{at}\" title=\"{at}\">{rel}</time>")
}

/// An optional latency figure.
pub fn ms_opt(ms: Option<u64>) -> String {
    ms.map_or_else(|| "–".to_owned(), |v| dur(i64::try_from(v).unwrap_or(i64::MAX)))
}

/// A rate 0..1 as a percentage.
pub fn pct(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// A task id as a link to its page (the id shortened for reading, whole in the link).
pub fn task_link(id: &uuid::Uuid) -> String {
    let text = id.to_string();
    format!("<a href=\"/ui/tasks/{text}\" class=\"id\" title=\"{text}\">{}…</a>", &text[..13])
}

/// A state name as a badge.
pub fn state_badge(state: &str) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", e(state))
}
