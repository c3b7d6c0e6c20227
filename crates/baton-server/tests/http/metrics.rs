//! Handoff metrics end to end: `/v1/stats`, `/metrics` and alerts.
//!
//! Goal: the figures are exact on a scripted run (known handoffs, accept
//! latencies, a reroute after a timeout, a waiting backlog), whether they
//! come from the aggregator's unflushed deltas or from the stored rollups;
//! `/metrics` is valid OpenMetrics text with the same figures; anomalies are
//! listed and acknowledged. Method: the SQLite `Api` of this binary (manual
//! clock; the sweeper stepped by hand); `/metrics` is read by `openmetrics`,
//! a small strict parser of the text format written here.

use super::{Api, id};
use baton_core::Op;
use baton_core::metrics::{Anomaly, RollupKey};
use baton_server::sweeper;
use serde_json::{Value, json};

/// Submits into intake, claims as the nurse, hands off to `to`; returns the task id.
async fn hand_off(api: &Api, to: &str) -> String {
    let task = id(&api.submit("intake", json!({})).await);
    let lease = api.claim("nurse", "intake").await;
    assert_eq!(lease["task"], task.as_str(), "tasks are claimed in order");
    let path = format!("/v1/tasks/{task}/handoff");
    api.post(&path, json!({"agent": "nurse", "epoch": lease["epoch"], "to_stage": to})).await.expect(200);
    task
}

/// The doctor accepts one triage task and completes it.
async fn accept_and_complete(api: &Api, task: &str) {
    let lease = api.claim("doctor", "triage").await;
    assert_eq!(lease["task"], task);
    let path = format!("/v1/tasks/{task}/complete");
    api.post(&path, json!({"agent": "doctor", "epoch": lease["epoch"]})).await.expect(200);
}

/// Two handoffs accepted after 2 s and 4 s, one rerouted after `sorting`'s
/// 10 s `accept_within` (no re-offers), then 5 s more of waiting in `manual`.
async fn scripted_run(api: &Api) {
    let first = hand_off(api, "triage").await;
    api.clock.advance(2_000);
    accept_and_complete(api, &first).await;
    let second = hand_off(api, "triage").await;
    api.clock.advance(4_000);
    accept_and_complete(api, &second).await;
    hand_off(api, "sorting").await;
    api.clock.advance(10_001);
    assert_eq!(sweeper::step(&api.state).await, 0, "the handoff to sorting is rerouted");
    api.clock.advance(5_000);
}

fn edge<'a>(stats: &'a Value, list: &str, from: &str, to: &str) -> &'a Value {
    stats[list]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
        .unwrap_or_else(|| panic!("edge {from} -> {to} in {list}: {stats}"))
}

fn stage<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("stage {name}: {stats}"))
}

fn check_stats(stats: &Value) {
    let triage = edge(stats, "edges", "intake", "triage");
    assert_eq!((triage["handoffs"].as_u64(), triage["accepted"].as_u64()), (Some(2), Some(2)));
    // 2000 ms lies in the histogram bucket bounded by 1.5^19 = 2216.8 ms.
    assert_eq!(
        triage["accept_latency"],
        json!({"count": 2, "p50_ms": 2217, "p95_ms": 4000, "p99_ms": 4000, "max_ms": 4000})
    );
    assert_eq!((triage["samples"].as_u64(), triage["success_rate"].as_f64()), (Some(2), Some(1.0)));
    let sorting = edge(stats, "edges", "intake", "sorting");
    assert_eq!(
        (sorting["handoffs"].as_u64(), sorting["reroutes"].as_u64(), sorting["success_rate"].as_f64()),
        (Some(1), Some(1), Some(0.0))
    );
    let agents = edge(stats, "agent_edges", "nurse", "doctor");
    assert_eq!(
        (agents["accepted"].as_u64(), agents["accept_latency"]["max_ms"].as_u64()),
        (Some(2), Some(4000))
    );
    let intake = stage(stats, "intake");
    assert_eq!(
        [&intake["submitted"], &intake["claims"], &intake["completes"], &intake["backlog"]],
        [&json!(3), &json!(3), &json!(3), &json!(0)]
    );
    let triage = stage(stats, "triage");
    assert_eq!([&triage["handoffs_in"], &triage["claims"]], [&json!(2), &json!(2)]);
    let manual = stage(stats, "manual");
    assert_eq!((manual["backlog"].as_u64(), manual["oldest_waiting_ms"].as_u64()), (Some(1), Some(5_000)));
    assert_eq!(stage(stats, "sorting")["reroutes"], 1);
}

#[tokio::test]
async fn stats_are_exact_on_a_scripted_run_before_and_after_a_flush() {
    let api = Api::new();
    scripted_run(&api).await;
    let before = api.get("/v1/stats?window=1h").await.expect(200);
    check_stats(&before);
    assert!(baton_server::metrics::flush(&api.state).await > 0, "the deltas are stored");
    assert_eq!(api.state.hub().metrics().health().pending, 0);
    let after = api.get("/v1/stats?window=1h").await.expect(200);
    check_stats(&after);
    assert_eq!(before["edges"], after["edges"], "stored rollups give the same figures");

    let only = api.get("/v1/stats?edge=intake:triage").await.expect(200);
    assert_eq!(only["edges"].as_array().map(Vec::len), Some(1));
    assert_eq!(only["stages"], json!([]));
    let one_stage = api.get("/v1/stats?stage=manual").await.expect(200);
    assert_eq!(one_stage["stages"].as_array().map(Vec::len), Some(1));
    // A window that ends before the run saw none of it.
    api.clock.advance(2 * 3_600_000);
    let later = api.get("/v1/stats?window=1h").await.expect(200);
    assert_eq!(later["edges"], json!([]));
    assert_eq!(stage(&later, "manual")["backlog"], 1, "gauges are live");
    for bad in ["/v1/stats?window=0s", "/v1/stats?window=9d", "/v1/stats?window=1x", "/v1/stats?windows=1h"] {
        assert_eq!(api.get(bad).await.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_the_scripted_figures() {
    let api = Api::new();
    scripted_run(&api).await;
    let (status, headers, body) = api.send_raw(super::request("GET", "/metrics", None)).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = String::from_utf8(body).expect("UTF-8");
    let samples = openmetrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let get = |name: &str, labels: &[(&str, &str)]| {
        let key = (name.to_owned(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        *samples.get(&key).unwrap_or_else(|| panic!("{name}{labels:?} in\n{text}"))
    };
    let triage = [("kind", "stage"), ("from", "intake"), ("to", "triage")];
    assert_eq!(get("baton_edge_handoffs_total", &triage), 2.0);
    assert_eq!(get("baton_edge_accepted_total", &triage), 2.0);
    assert_eq!(get("baton_edge_accept_latency_seconds_count", &triage), 2.0);
    assert_eq!(get("baton_edge_accept_latency_seconds_sum", &triage), 6.0);
    let sorting = [("kind", "stage"), ("from", "intake"), ("to", "sorting")];
    assert_eq!(get("baton_edge_reroutes_total", &sorting), 1.0);
    let agents = [("kind", "agent"), ("from", "nurse"), ("to", "doctor")];
    assert_eq!(get("baton_edge_accepted_total", &agents), 2.0);
    assert_eq!(get("baton_stage_claims_total", &[("stage", "intake")]), 3.0);
    assert_eq!(get("baton_stage_backlog", &[("stage", "manual")]), 1.0);
    assert_eq!(get("baton_stage_oldest_waiting_seconds", &[("stage", "manual")]), 5.0);
    assert_eq!(get("baton_store_up", &[]), 1.0);
    assert_eq!(get("baton_metrics_dropped_total", &[]), 0.0);
}

#[tokio::test]
async fn alerts_are_listed_and_acknowledged() {
    let api = Api::new();
    let raise = |metric: &str| Anomaly {
        key: RollupKey::Edge { from: "a".into(), to: "b".into() },
        metric: metric.to_owned(),
        window_start: 0,
        window_end: 60_000,
        baseline: 30_000.0,
        observed: 61_000.0,
        message: format!("{metric} departed"),
        raised_at: 60_000,
        acked: None,
    };
    for metric in ["accept_latency", "success_rate"] {
        api.state.store().execute(Op::RaiseAnomaly(raise(metric)), None).await.expect("raise");
    }
    let open = api.get("/v1/alerts").await.expect(200);
    assert_eq!(open["anomalies"].as_array().map(Vec::len), Some(2));
    assert_eq!(open["anomalies"][0]["scope"], "edge");
    assert_eq!(open["anomalies"][0]["to"], "b");
    let acked = api.post("/v1/alerts/1/ack", json!(null)).await.expect(200);
    assert_eq!(acked["acked_by"], "anonymous");
    let open = api.get("/v1/alerts").await.expect(200);
    assert_eq!(open["anomalies"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(
        api.get("/v1/alerts?all=true").await.expect(200)["anomalies"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(api.post("/v1/alerts/9/ack", json!(null)).await.status, 404);
    assert_eq!(api.post("/v1/alerts/x/ack", json!(null)).await.status, 400);
}

/// A strict reader of the OpenMetrics text format, enough for these tests:
/// every sample belongs to a family declared by `# TYPE` before it (with
/// `# HELP`), names and labels are well formed, counters end in `_total`,
/// histogram buckets are cumulative with `le` ending at `+Inf` equal to
/// `_count`, no sample repeats, and the text ends with `# EOF`.
pub mod openmetrics {
    use std::collections::{BTreeMap, BTreeSet};

    pub type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

    pub fn parse(text: &str) -> Result<Samples, String> {
        let body = text.strip_suffix("# EOF\n").ok_or("the text does not end with `# EOF`")?;
        let mut families: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = BTreeSet::new();
        let mut samples = Samples::new();
        for (n, line) in body.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                check_name(name).map_err(at)?;
                match kind {
                    "HELP" => {
                        helped.insert(name.to_owned());
                    }
                    "TYPE" => {
                        let ty = parts.next().unwrap_or("");
                        if !["counter", "gauge", "histogram", "summary", "info", "unknown"].contains(&ty) {
                            return Err(at(format!("unknown type {ty}")));
                        }
                        if families.insert(name.to_owned(), ty.to_owned()).is_some() {
                            return Err(at("family declared twice".into()));
                        }
                    }
                    "UNIT" => {}
                    _ => return Err(at("unknown descriptor".into())),
                }
                continue;
            }
            let (name, labels, value) = sample(line).map_err(at)?;
            let (family, ty) = families
                .iter()
                .filter(|(f, _)| name.starts_with(f.as_str()))
                .max_by_key(|(f, _)| f.len())
                .ok_or_else(|| at("no family declared".into()))?;
            if !helped.contains(family) {
                return Err(at("family without HELP".into()));
            }
            let suffix = &name[family.len()..];
            let allowed: &[&str] = match ty.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            if !allowed.contains(&suffix) {
                return Err(at(format!("suffix {suffix:?} on a {ty}")));
            }
            if (suffix == "_bucket") != labels.contains_key("le") {
                return Err(at("`le` belongs on histogram buckets only".into()));
            }
            if samples.insert((name.clone(), labels), value).is_some() {
                return Err(at("sample repeated".into()));
            }
        }
        check_histograms(&families, &samples)?;
        Ok(samples)
    }

    fn check_histograms(families: &BTreeMap<String, String>, samples: &Samples) -> Result<(), String> {
        for (family, _) in families.iter().filter(|(_, t)| *t == "histogram") {
            let bucket = format!("{family}_bucket");
            let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for ((name, labels), value) in samples.iter().filter(|((n, _), _)| *n == bucket) {
                let _ = name;
                let mut rest = labels.clone();
                let le = rest.remove("le").unwrap_or_default();
                let le =
                    if le == "+Inf" { f64::INFINITY } else { le.parse().map_err(|_| format!("le {le}"))? };
                series.entry(rest).or_default().push((le, *value));
            }
            for (labels, mut buckets) in series {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                    return Err(format!("{family}{labels:?}: buckets are not cumulative"));
                }
                let count = samples.get(&(format!("{family}_count"), labels.clone())).copied();
                if buckets.last().map(|b| (b.0, Some(b.1))) != Some((f64::INFINITY, count)) {
                    return Err(format!("{family}{labels:?}: +Inf bucket differs from _count"));
                }
            }
        }
        Ok(())
    }

    fn check_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            });
        if ok { Ok(()) } else { Err(format!("bad metric name {name:?}")) }
    }

    type Sample = (String, BTreeMap<String, String>, f64);

    fn sample(line: &str) -> Result<Sample, String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        check_name(name)?;
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '}' {
                    end = Some(i);
                    break;
                }
                let key_start = i;
                let mut key_end = i;
                for (j, c) in chars.by_ref() {
                    if c == '=' {
                        key_end = j;
                        break;
                    }
                }
                let key = inner[key_start..key_end].to_owned();
                check_name(&key)?;
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err("label value not quoted".into());
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('"' | '\\'))) => value.push(c),
                            _ => return Err("bad escape".into()),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated label value".into()),
                    }
                }
                if labels.insert(key, value).is_some() {
                    return Err("label repeated".into());
                }
                if let Some((_, ',')) = chars.peek() {
                    chars.next();
                }
            }
            let end = end.ok_or("unterminated labels")?;
            rest = &inner[end + 1..];
        }
        let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
        let value = value.split(' ').next().unwrap_or("");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
        };
        Ok((name.to_owned(), labels, value))
    }
}

/// An anomaly reaches a webhook that lists kind `anomaly`, signed, with no
/// task and the anomaly (its id included, to acknowledge it); a webhook
/// without the kind, or filtering on other stages, is not sent it.
#[tokio::test]
async fn an_anomaly_is_delivered_to_webhooks_that_want_it() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use baton_api::webhook::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
    use baton_api::{NoticeKind, WebhookNotice};
    use baton_server::webhooks::{self, Secret, Webhook, WebhookOptions, wire_notice};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const SECRET: &str = "anomaly-secret-0123456789";
    let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let sink = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push((headers, body)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let hook = |name: &str, kinds: &[NoticeKind], stages: Option<Vec<String>>| {
        let secret = Secret::resolve(SECRET, |_| None).expect("secret");
        Webhook::new(name, &url, secret, kinds, stages).expect("webhook")
    };
    let wanted = hook("ops", &[NoticeKind::Anomaly], Some(vec!["b".into()]));
    let other_stage = hook("billing", &[NoticeKind::Anomaly], Some(vec!["billing".into()]));
    let no_kind = hook("handoffs", &[NoticeKind::Handoff, NoticeKind::Alert], None);
    let api = Api::with_options(|o| {
        o.webhooks = WebhookOptions { hooks: vec![wanted], poll_ms: 5, ..WebhookOptions::default() };
    });
    let anomaly = Anomaly {
        key: RollupKey::Edge { from: "a".into(), to: "b".into() },
        metric: "accept_latency".into(),
        window_start: 0,
        window_end: 300_000,
        baseline: 30_000.0,
        observed: 60_000.0,
        message: "edge a -> b: mean accept latency 60.0 s over the window, baseline 30.0 s".into(),
        raised_at: 300_000,
        acked: None,
    };
    api.state.store().execute(Op::RaiseAnomaly(anomaly.clone()), None).await.expect("raise");
    let notices = api.state.store().notices(0, 10).await.expect("notices");
    let (seq, notice) = notices.last().expect("the anomaly's notice").clone();
    assert!(!other_stage.wants(&notice) && !no_kind.wants(&notice), "only webhooks that list it");

    let dispatcher = tokio::spawn(webhooks::run(api.state.clone()));
    let start = Instant::now();
    while received.lock().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "the anomaly was never delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    api.state.begin_shutdown();
    dispatcher.await.expect("the dispatcher stops");
    let (headers, body) = received.lock().unwrap()[0].clone();
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    assert_eq!(header(ID_HEADER), seq.to_string());
    let now = api.clock.now();
    baton_api::webhook::verify(
        SECRET.as_bytes(),
        &header(TIMESTAMP_HEADER),
        &body,
        &header(SIGNATURE_HEADER),
        now,
        60_000,
    )
    .expect("signed");
    let sent: WebhookNotice = serde_json::from_slice(&body).expect("a notice");
    assert_eq!(Some(sent.clone()), wire_notice(seq, &notice));
    assert_eq!((sent.kind, sent.task), (NoticeKind::Anomaly, None));
    let wire = sent.anomaly.expect("the anomaly");
    assert_eq!((wire.id, wire.metric.as_str(), wire.to.as_deref()), (1, "accept_latency", Some("b")));
}

/// Task-related log lines carry the task's W3C trace id: the debug line of
/// each change (target `baton::task`) and the refusal log of a holder call,
/// through the request span's fields. Method: a JSON subscriber set for this
/// test's thread only, writing into a buffer.
#[tokio::test(flavor = "current_thread")]
async fn task_log_lines_carry_the_trace_id() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let capture = Capture(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || capture.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let api = Api::new();
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let task =
        api.post("/v1/tasks", json!({"stage": "a", "payload": {}, "trace": traceparent})).await.expect(201);
    let task = id(&task);
    let lease = api.claim("w", "a").await;
    let path = format!("/v1/tasks/{task}/handoff");
    api.post(&path, json!({"agent": "w", "epoch": lease["epoch"], "to_stage": "b"})).await.expect(200);
    let stale = api.post(&path, json!({"agent": "w", "epoch": 99, "to_stage": "b"})).await;
    assert_eq!(stale.status, 409);

    let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let with = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("a {message:?} line in\n{text}"))
    };
    for change in ["submitted", "claimed", "handed off"] {
        assert_eq!(with(change)["fields"]["trace_id"], TRACE, "{change}");
        assert_eq!(with(change)["fields"]["task"], task.as_str());
    }
    let refused = with("refused");
    assert_eq!(refused["fields"]["code"], "lease_lost");
    assert_eq!((&refused["span"]["task"], &refused["span"]["trace_id"]), (&json!(task), &json!(TRACE)));
}
