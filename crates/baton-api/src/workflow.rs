//! Workflow files: the TOML format a workflow is declared in, its parser into
//! core's checked model (`baton_core::Workflow`), and the renderer that prints
//! a workflow back in the same format. Every mistake comes back as a
//! `WorkflowFileError` with the 1-based line and column of the offending key
//! or value and a sentence that says what to fix: TOML syntax, unknown keys,
//! wrong types, bad durations, policies outside the limits, bad stage names,
//! and the graph errors of `Workflow::check`, each mapped back to the value it
//! is about. The graph rules themselves stay in `baton-core`; storing and
//! numbering versions is the store's business (parsed workflows have version 0).
//! The format is described in docs/reference/workflow-file.md.

use baton_core::decide::check_stage;
use baton_core::{
    A2aSettings, Backoff, GraphError, Limits, Millis, Policies, Rules, StageName, StagePolicy, Workflow,
    WorkflowStage,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use toml::Spanned;
use utoipa::ToSchema;

/// Stages one workflow may declare.
pub const WORKFLOW_STAGES_MAX: usize = 64;
/// Bytes of one workflow file.
pub const WORKFLOW_FILE_BYTES_MAX: usize = 256 * 1024;
/// Errors reported for one file; past this the rest are left out (fix these first).
pub const WORKFLOW_ERRORS_MAX: usize = 100;
/// Bytes of an agent id: the server's limit (baton-server `http::principal::AGENT_BYTES_MAX`).
const AGENT_BYTES_MAX: usize = 128;

/// One mistake in a workflow file, where it is and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct WorkflowFileError {
    /// 1-based line of the offending key or value.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// The key the error is about as a dotted path (`stages.intake.lease`);
    /// empty when the error is about the file as a whole (e.g. its syntax).
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for WorkflowFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for WorkflowFileError {}

/// Parses and checks a workflow file. `global` supplies the default policy
/// every stage starts from and the global human stages escalations may name
/// (such as `inbox`); `limits` bounds leases and stage names. The workflow
/// comes back with version 0: the store numbers versions when it is applied.
/// Errors are sorted by position; past `WORKFLOW_ERRORS_MAX` one last error
/// says how many more were left out.
pub fn parse_workflow(
    source: &str,
    global: &Policies,
    limits: &Limits,
) -> Result<Workflow, Vec<WorkflowFileError>> {
    let lines = LineIndex::new(source);
    if source.len() > WORKFLOW_FILE_BYTES_MAX {
        return Err(vec![lines.error(
            0,
            "",
            format!(
                "the file is {} bytes; a workflow file holds at most {WORKFLOW_FILE_BYTES_MAX} bytes \
                 (WORKFLOW_FILE_BYTES_MAX): split it into several workflows",
                source.len()
            ),
        )]);
    }
    let doc: FileDoc = match toml::from_str(source) {
        Ok(doc) => doc,
        Err(error) => return Err(vec![toml_error(source, &lines, &error)]),
    };
    let mut builder = Builder {
        lines,
        global,
        limits,
        name_rules: Rules { policies: Policies::default(), limits: limits.clone() },
        errors: Vec::new(),
        spans: FileSpans::default(),
    };
    let workflow = builder.build(doc);
    let mut errors = builder.errors;
    if let Some(workflow) = &workflow {
        for graph in workflow.check(global) {
            let error = builder.spans.locate(&graph, &builder.lines);
            errors.push(error);
        }
    }
    match workflow {
        Some(workflow) if errors.is_empty() => Ok(workflow),
        _ => {
            // A mistake in [defaults] is found once per stage that inherits it: report it once.
            let mut seen = HashSet::new();
            errors.retain(|e| seen.insert(e.clone()));
            errors.sort_by_key(|e| (e.line, e.column));
            if let Some(first_left_out) = errors.get(WORKFLOW_ERRORS_MAX).cloned() {
                let more = errors.len() - WORKFLOW_ERRORS_MAX;
                errors.truncate(WORKFLOW_ERRORS_MAX);
                errors.push(WorkflowFileError {
                    message: format!(
                        "{more} more errors left out (WORKFLOW_ERRORS_MAX = {WORKFLOW_ERRORS_MAX}): fix these first"
                    ),
                    ..first_left_out
                });
            }
            Err(errors)
        }
    }
}

/// Prints a workflow as a workflow file that parses back to the same
/// definition: every policy value is written out (so the result does not
/// depend on the defaults it was parsed with), durations in the largest exact
/// unit, the entry stage first and the others in route order.
pub fn render_workflow(wf: &Workflow) -> String {
    let mut out = String::new();
    out.push_str(&format!("name = {}\n", quote(&wf.name)));
    out.push_str(&format!("entry = {}\n", quote(wf.entry.as_str())));
    for name in stage_order(wf) {
        let Some(stage) = wf.stages.get(name) else { continue };
        let p = &stage.policy;
        out.push_str(&format!("\n[stages.{}]\n", key(name.as_str())));
        out.push_str(&format!("accept_within = {}\n", quote(&format_duration(p.accept_within_ms))));
        out.push_str(&format!("lease = {}\n", quote(&format_duration(p.lease_ms))));
        out.push_str(&format!("max_attempts = {}\n", p.max_attempts));
        out.push_str(&format!(
            "retry = {{ initial = {}, max = {}, multiplier = {} }}\n",
            quote(&format_duration(p.retry.initial_ms)),
            quote(&format_duration(p.retry.max_ms)),
            p.retry.multiplier
        ));
        out.push_str(&format!("reoffers = {}\n", p.reoffers));
        out.push_str(&format!("deadline_near = {}\n", quote(&format_duration(p.deadline_near_ms))));
        if let Some(to) = &p.reroute_to {
            out.push_str(&format!("reroute_to = {}\n", quote(to.as_str())));
        }
        if let Some(to) = &p.escalate_to {
            out.push_str(&format!("escalate_to = {}\n", quote(to.as_str())));
        }
        if p.human {
            out.push_str("human = true\n");
        }
        if let Some(capacity) = stage.capacity {
            out.push_str(&format!("capacity = {capacity}\n"));
        }
        if !stage.agents.is_empty() {
            out.push_str(&format!("agents = {}\n", list(stage.agents.iter().map(String::as_str))));
        }
        if !stage.routes.is_empty() {
            out.push_str(&format!("routes = {}\n", list(stage.routes.iter().map(StageName::as_str))));
        }
        if let Some(next) = &stage.next {
            out.push_str(&format!("next = {}\n", quote(next.as_str())));
        }
        if let Some(to) = &stage.compensate {
            out.push_str(&format!("compensate = {}\n", quote(to.as_str())));
        }
        if let Some(canary) = &stage.canary {
            out.push_str(&format!("canary = {}\n", quote(canary.stage.as_str())));
            out.push_str(&format!("canary_percent = {}\n", canary.percent));
        }
    }
    if let Some(a2a) = &wf.a2a {
        out.push_str("\n[a2a]\n");
        if !a2a.description.is_empty() {
            out.push_str(&format!("description = {}\n", quote(&a2a.description)));
        }
        out.push_str(&format!("escalation_is_failure = {}\n", a2a.escalation_is_failure));
        if !a2a.push_url_prefixes.is_empty() {
            out.push_str(&format!(
                "push_url_prefixes = {}\n",
                list(a2a.push_url_prefixes.iter().map(String::as_str))
            ));
        }
    }
    out
}

/// Parses a duration as the file writes it: digits and one of the units
/// `ms`, `s`, `m`, `h`, `d` (`500ms`, `30s`, `5m`, `2h`, `1d`).
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let hint = "write a whole number and a unit: \"500ms\", \"30s\", \"5m\", \"2h\" or \"1d\"";
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("duration {text:?} is negative: {hint}"));
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("{text:?} is not a duration: {hint}"));
    }
    let factor: i64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("duration {text:?} has no unit: {hint}")),
        _ => return Err(format!("duration {text:?} has an unknown unit {unit:?}: {hint}")),
    };
    number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

/// Writes milliseconds in the largest unit that holds them exactly (`90s`, `2m`, `1d`).
pub fn format_duration(ms: Millis) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, factor) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms % factor == 0 {
            return format!("{}{unit}", ms / factor);
        }
    }
    format!("{ms}ms")
}

// ---------------------------------------------------------------------------
// The file as written: every value keeps its position.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    entry: Option<Spanned<String>>,
    /// For readers of the file; not part of the checked model.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    defaults: Option<DefaultsDoc>,
    #[serde(default)]
    stages: BTreeMap<Spanned<String>, StageDoc>,
    /// `[a2a]`: the workflow is also an A2A agent (docs/a2a.md).
    #[serde(default)]
    a2a: Option<A2aDoc>,
}

/// `[a2a]`: how the workflow answers as an A2A agent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct A2aDoc {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    escalation_is_failure: bool,
    #[serde(default)]
    push_url_prefixes: Vec<Spanned<String>>,
}

/// `[defaults]`: the policy keys every stage starts from.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsDoc {
    #[serde(default)]
    accept_within: Option<Spanned<DurationMs>>,
    #[serde(default)]
    lease: Option<Spanned<DurationMs>>,
    #[serde(default)]
    deadline_near: Option<Spanned<DurationMs>>,
    #[serde(default)]
    max_attempts: Option<Spanned<Count>>,
    #[serde(default)]
    retry: Option<Spanned<RetryDoc>>,
    #[serde(default)]
    reoffers: Option<Spanned<Count>>,
    #[serde(default)]
    escalate_to: Option<Spanned<String>>,
}

/// `[stages.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageDoc {
    #[serde(default)]
    accept_within: Option<Spanned<DurationMs>>,
    #[serde(default)]
    lease: Option<Spanned<DurationMs>>,
    #[serde(default)]
    deadline_near: Option<Spanned<DurationMs>>,
    #[serde(default)]
    max_attempts: Option<Spanned<Count>>,
    #[serde(default)]
    retry: Option<Spanned<RetryDoc>>,
    #[serde(default)]
    reoffers: Option<Spanned<Count>>,
    #[serde(default)]
    reroute_to: Option<Spanned<String>>,
    #[serde(default)]
    escalate_to: Option<Spanned<String>>,
    #[serde(default)]
    human: Option<Spanned<bool>>,
    #[serde(default)]
    capacity: Option<Spanned<Count>>,
    #[serde(default)]
    agents: Vec<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    #[serde(default)]
    next: Option<Spanned<String>>,
    #[serde(default)]
    compensate: Option<Spanned<String>>,
    #[serde(default)]
    canary: Option<Spanned<String>>,
    #[serde(default)]
    canary_percent: Option<Spanned<Count>>,
}

/// `retry = { initial = "1s", max = "1m", multiplier = 2 }`; missing keys keep the base backoff's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryDoc {
    #[serde(default)]
    initial: Option<Spanned<DurationMs>>,
    #[serde(default)]
    max: Option<Spanned<DurationMs>>,
    #[serde(default)]
    multiplier: Option<Spanned<Count>>,
}

/// A duration string, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct DurationMs(Millis);

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationMs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration in quotes such as \"500ms\", \"30s\", \"5m\", \"2h\" or \"1d\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<DurationMs, E> {
                parse_duration(text).map(DurationMs).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DurationMs, E> {
                Err(E::custom(format!(
                    "a bare number ({n}) is not a duration: write it in quotes with a unit, \
                     like \"500ms\", \"30s\", \"5m\", \"2h\" or \"1d\""
                )))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DurationMs, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<DurationMs, E> {
                Err(E::custom(format!(
                    "a bare number ({n}) is not a duration: write it in quotes with a unit, \
                     like \"500ms\", \"30s\", \"5m\", \"2h\" or \"1d\""
                )))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A whole number that is not negative (attempts, re-offers, capacity, multiplier).
#[derive(Debug, Clone, Copy)]
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number without quotes, such as 3")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Count, E> {
                if n < 0 {
                    return Err(E::custom(format!("{n} is negative: write a whole number of 0 or more")));
                }
                self.visit_u64(n.unsigned_abs())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Count, E> {
                u32::try_from(n)
                    .map(Count)
                    .map_err(|_| E::custom(format!("{n} is too large: at most {}", u32::MAX)))
            }
        }
        deserializer.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// From the file to the model.

/// Where things are in the file, for mapping graph errors back to it.
#[derive(Debug, Default)]
struct FileSpans {
    entry: Option<Range<usize>>,
    stages: HashMap<String, StageSpans>,
}

#[derive(Debug, Default)]
struct StageSpans {
    key: Range<usize>,
    /// Each field's value, by field name; inherited ones point into `[defaults]`.
    values: HashMap<&'static str, (Range<usize>, String)>,
    /// Each element of `routes`, in order.
    routes: Vec<(String, Range<usize>)>,
}

impl FileSpans {
    fn locate(&self, graph: &GraphError, lines: &LineIndex) -> WorkflowFileError {
        let Some(stage) = &graph.stage else {
            let at = self.entry.as_ref().map_or(0, |r| r.start);
            return lines.error(at, graph.field, graph.message.clone());
        };
        let Some(spans) = self.stages.get(stage.as_str()) else {
            return lines.error(0, graph.field, graph.message.clone());
        };
        let stage_field = format!("stages.{}", stage.as_str());
        if graph.field == "routes"
            && let Some(value) = &graph.value
        {
            // Routes are listed once each (a repeat is refused before the graph checks).
            let at = spans.routes.iter().find(|(name, _)| name == value.as_str()).map(|(_, r)| r.start);
            return lines.error(
                at.unwrap_or(spans.key.start),
                &format!("{stage_field}.routes"),
                graph.message.clone(),
            );
        }
        match spans.values.get(graph.field) {
            Some((range, field)) => lines.error(range.start, field, graph.message.clone()),
            None => lines.error(spans.key.start, &stage_field, graph.message.clone()),
        }
    }
}

struct Builder<'a> {
    lines: LineIndex,
    global: &'a Policies,
    limits: &'a Limits,
    /// What `check_stage` judges names by (only the limits matter to it).
    name_rules: Rules,
    errors: Vec<WorkflowFileError>,
    spans: FileSpans,
}

impl Builder<'_> {
    /// The model, or `None` when a required key is missing; errors in `self.errors`.
    fn build(&mut self, doc: FileDoc) -> Option<Workflow> {
        if let Some(name) = &doc.name {
            self.check_workflow_name(name);
        } else {
            self.error(
                0,
                "name",
                "missing `name`: give the workflow a name, e.g. name = \"patient-intake\"".to_owned(),
            );
        }
        if doc.entry.is_none() {
            self.error(
                0,
                "entry",
                "missing `entry`: name the stage new tasks start in, e.g. entry = \"intake\"".to_owned(),
            );
        }
        self.spans.entry = doc.entry.as_ref().map(Spanned::span);
        let defaults = doc.defaults.unwrap_or_default();
        self.check_defaults(&defaults);
        self.check_stage_count(&doc.stages);

        let mut stages = BTreeMap::new();
        for (key, stage) in doc.stages {
            let name = key.get_ref().clone();
            self.check_stage_name(&name, key.span(), &format!("stages.{name}"), "stage");
            let (built, spans) = self.stage(&name, key.span(), &stage, &defaults);
            self.spans.stages.insert(name.clone(), spans);
            stages.insert(StageName::new(name), built);
        }
        let a2a = doc.a2a.map(|a2a| self.a2a(a2a));
        let (name, entry) = (doc.name?, doc.entry?);
        Some(Workflow {
            name: name.into_inner(),
            version: 0,
            entry: StageName::new(entry.into_inner()),
            stages,
            a2a,
        })
    }

    /// `[a2a]`: every push prefix must be an absolute `http://` or `https://` URL.
    fn a2a(&mut self, doc: A2aDoc) -> A2aSettings {
        let mut prefixes = Vec::new();
        for prefix in doc.push_url_prefixes {
            let text = prefix.get_ref();
            let host = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://"));
            if host.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
                let error = self.lines.error(
                    prefix.span().start,
                    "a2a.push_url_prefixes",
                    format!(
                        "push URL prefix {text:?} is not an absolute http:// or https:// URL with a host: \
                         write one such as \"https://hooks.example.com/a2a/\""
                    ),
                );
                self.errors.push(error);
            }
            prefixes.push(prefix.into_inner());
        }
        A2aSettings {
            description: doc.description.unwrap_or_default(),
            escalation_is_failure: doc.escalation_is_failure,
            push_url_prefixes: prefixes,
        }
    }

    /// One stage: its policy from the global default, then `[defaults]`, then its own keys.
    fn stage(
        &mut self,
        name: &str,
        key: Range<usize>,
        doc: &StageDoc,
        defaults: &DefaultsDoc,
    ) -> (WorkflowStage, StageSpans) {
        let field = |key: &str| format!("stages.{name}.{key}");
        let mut spans = StageSpans { key: key.clone(), ..StageSpans::default() };
        let human = doc.human.as_ref().is_some_and(|h| *h.get_ref());
        let mut policy = self.global.default.clone();
        if human {
            // A human stage waits for people: it keeps the built-in human
            // stage's acceptance time unless the file sets one.
            policy.accept_within_ms = StagePolicy::human().accept_within_ms;
        }
        policy.human = human;

        self.check_policy_values(
            &field(""),
            doc.accept_within.as_ref(),
            doc.lease.as_ref(),
            doc.max_attempts.as_ref(),
            doc.retry.as_ref(),
        );
        // Defaults first, then the stage's own keys over them.
        let layers = [
            ("defaults.", &defaults.accept_within, &defaults.lease, &defaults.max_attempts, &defaults.retry),
            ("", &doc.accept_within, &doc.lease, &doc.max_attempts, &doc.retry),
        ];
        let mut retry_at: Option<(Range<usize>, String)> = None;
        for (prefix, accept_within, lease, max_attempts, retry) in layers {
            let path = |key: &str| if prefix.is_empty() { field(key) } else { format!("{prefix}{key}") };
            if let Some(v) = accept_within {
                policy.accept_within_ms = v.get_ref().0;
            }
            if let Some(v) = lease {
                policy.lease_ms = v.get_ref().0;
            }
            if let Some(v) = max_attempts {
                policy.max_attempts = v.get_ref().0;
            }
            if let Some(retry) = retry {
                let r = retry.get_ref();
                if let Some(v) = &r.initial {
                    policy.retry.initial_ms = v.get_ref().0;
                }
                if let Some(v) = &r.max {
                    policy.retry.max_ms = v.get_ref().0;
                }
                if let Some(v) = &r.multiplier {
                    policy.retry.multiplier = v.get_ref().0;
                }
                retry_at = Some((retry.span(), path("retry")));
            }
        }
        if let Some(v) = doc.reoffers.as_ref().or(defaults.reoffers.as_ref()) {
            policy.reoffers = v.get_ref().0;
        }
        if let Some(v) = doc.deadline_near.as_ref().or(defaults.deadline_near.as_ref()) {
            policy.deadline_near_ms = v.get_ref().0;
        }
        self.check_backoff(&policy.retry, retry_at.map_or((key.clone(), field("retry")), |at| at));

        let note = |spans: &mut StageSpans, name: &'static str, value: &Spanned<String>, path: String| {
            spans.values.insert(name, (value.span(), path));
            StageName::new(value.get_ref().clone())
        };
        policy.reroute_to =
            doc.reroute_to.as_ref().map(|v| note(&mut spans, "reroute_to", v, field("reroute_to")));
        policy.escalate_to = match (&doc.escalate_to, &defaults.escalate_to) {
            (Some(v), _) => Some(note(&mut spans, "escalate_to", v, field("escalate_to"))),
            // A human stage is where escalations end: the default target is not for it.
            (None, Some(v)) if !human => {
                Some(note(&mut spans, "escalate_to", v, "defaults.escalate_to".to_owned()))
            }
            _ => None,
        };
        let next = doc.next.as_ref().map(|v| note(&mut spans, "next", v, field("next")));
        let compensate =
            doc.compensate.as_ref().map(|v| note(&mut spans, "compensate", v, field("compensate")));
        let canary = match (&doc.canary, &doc.canary_percent) {
            (Some(to), Some(percent)) => {
                let stage = note(&mut spans, "canary", to, field("canary"));
                spans.values.insert("canary_percent", (percent.span(), field("canary_percent")));
                let percent = u8::try_from(percent.get_ref().0).unwrap_or(u8::MAX);
                Some(baton_core::Canary { stage, percent })
            }
            (Some(to), None) => {
                self.error(
                    to.span().start,
                    &field("canary"),
                    "a canary needs `canary_percent`: the share of `complete`'s traffic (1 to 99) it gets"
                        .to_owned(),
                );
                None
            }
            (None, Some(percent)) => {
                self.error(
                    percent.span().start,
                    &field("canary_percent"),
                    "`canary_percent` without `canary`: name the stage that gets the share".to_owned(),
                );
                None
            }
            (None, None) => None,
        };
        let capacity = doc.capacity.as_ref().map(|v| {
            spans.values.insert("capacity", (v.span(), field("capacity")));
            v.get_ref().0
        });

        let mut routes = Vec::new();
        for route in &doc.routes {
            let target = route.get_ref();
            if routes.iter().any(|r: &StageName| r.as_str() == target) {
                self.error(
                    route.span().start,
                    &field("routes"),
                    format!("`{target}` is listed twice in `routes`: list each stage once"),
                );
                continue;
            }
            spans.routes.push((target.clone(), route.span()));
            routes.push(StageName::new(target.clone()));
        }
        let mut agents: Vec<String> = Vec::new();
        for agent in &doc.agents {
            let id = agent.get_ref();
            if let Err(problem) = check_agent(id) {
                self.error(agent.span().start, &field("agents"), problem);
            } else if agents.contains(id) {
                self.error(
                    agent.span().start,
                    &field("agents"),
                    format!("agent `{id}` is listed twice in `agents`: list each agent once"),
                );
            } else {
                agents.push(id.clone());
            }
        }
        let stage = WorkflowStage { policy, routes, next, compensate, agents, capacity, canary };
        (stage, spans)
    }

    fn check_defaults(&mut self, defaults: &DefaultsDoc) {
        self.check_policy_values(
            "defaults.",
            defaults.accept_within.as_ref(),
            defaults.lease.as_ref(),
            defaults.max_attempts.as_ref(),
            defaults.retry.as_ref(),
        );
    }

    /// The checks of `Rules::validate` on the values a table sets itself, so
    /// each error points at the value that breaks the rule.
    fn check_policy_values(
        &mut self,
        prefix: &str,
        accept_within: Option<&Spanned<DurationMs>>,
        lease: Option<&Spanned<DurationMs>>,
        max_attempts: Option<&Spanned<Count>>,
        retry: Option<&Spanned<RetryDoc>>,
    ) {
        let field = |key: &str| format!("{prefix}{key}");
        if let Some(v) = accept_within
            && v.get_ref().0 <= 0
        {
            self.error(
                v.span().start,
                &field("accept_within"),
                "`accept_within` must be longer than 0: give agents time to claim, e.g. \"30s\"".to_owned(),
            );
        }
        if let Some(v) = lease {
            let (ms, min, max) = (v.get_ref().0, self.limits.lease_ttl_ms_min, self.limits.lease_ttl_ms_max);
            if ms < min || ms > max {
                self.error(
                    v.span().start,
                    &field("lease"),
                    format!(
                        "`lease` {} is outside the lease limits {}..={} \
                         (lease_ttl_ms_min..=lease_ttl_ms_max): pick a lease in that range",
                        format_duration(ms),
                        format_duration(min),
                        format_duration(max)
                    ),
                );
            }
        }
        if let Some(v) = max_attempts
            && v.get_ref().0 == 0
        {
            self.error(
                v.span().start,
                &field("max_attempts"),
                "`max_attempts` must be at least 1 (the first attempt counts)".to_owned(),
            );
        }
        if let Some(m) = retry.and_then(|r| r.get_ref().multiplier.as_ref())
            && m.get_ref().0 == 0
        {
            self.error(
                m.span().start,
                &field("retry.multiplier"),
                "`retry.multiplier` must be at least 1 (1 keeps the delay constant)".to_owned(),
            );
        }
    }

    /// The merged backoff: its first delay may not exceed its cap.
    fn check_backoff(&mut self, retry: &Backoff, (at, field): (Range<usize>, String)) {
        if retry.initial_ms > retry.max_ms {
            self.error(
                at.start,
                &field,
                format!(
                    "`retry.initial` {} is longer than `retry.max` {}: make initial at most max",
                    format_duration(retry.initial_ms),
                    format_duration(retry.max_ms)
                ),
            );
        }
    }

    fn check_stage_count(&mut self, stages: &BTreeMap<Spanned<String>, StageDoc>) {
        if stages.len() <= WORKFLOW_STAGES_MAX {
            return;
        }
        let mut starts: Vec<(usize, &str)> =
            stages.keys().map(|k| (k.span().start, k.get_ref().as_str())).collect();
        starts.sort_unstable();
        if let Some((at, name)) = starts.get(WORKFLOW_STAGES_MAX) {
            self.error(
                *at,
                &format!("stages.{name}"),
                format!(
                    "{} stages declared; a workflow holds at most {WORKFLOW_STAGES_MAX} \
                     (WORKFLOW_STAGES_MAX): split it into several workflows",
                    stages.len()
                ),
            );
        }
    }

    /// Stage names follow the server's rule (`check_stage`).
    fn check_stage_name(&mut self, name: &str, at: Range<usize>, field: &str, what: &str) {
        if check_stage(field, &StageName::new(name), &self.name_rules).is_ok() {
            return;
        }
        let message = if name.is_empty() {
            format!("a {what} name cannot be empty")
        } else if name.len() > self.limits.stage_bytes_max {
            format!(
                "{what} name `{name}` is {} bytes; at most {} (stage_bytes_max): shorten it",
                name.len(),
                self.limits.stage_bytes_max
            )
        } else {
            format!(
                "{what} name `{name}` has characters the server refuses: use letters, digits, '-', '_', '.' and '/' only"
            )
        };
        self.error(at.start, field, message);
    }

    /// Workflow names follow the stage name rule without `/`: they are one
    /// segment of an API path.
    fn check_workflow_name(&mut self, name: &Spanned<String>) {
        let text = name.get_ref();
        if text.contains('/') {
            self.error(
                name.span().start,
                "name",
                format!("workflow name `{text}` contains '/': use letters, digits, '-', '_' and '.' only"),
            );
        } else {
            self.check_stage_name(text, name.span(), "name", "workflow");
        }
    }

    fn error(&mut self, at: usize, field: &str, message: String) {
        self.errors.push(self.lines.error(at, field, message));
    }
}

/// Agent ids as the server accepts them (baton-server `http::principal::check_agent`:
/// 1 to `AGENT_BYTES_MAX` bytes of letters, digits and `-_.:@/`), so a
/// stage never names an agent that could not exist.
fn check_agent(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an agent id cannot be empty: name the agent or remove the entry".to_owned());
    }
    if id.len() > AGENT_BYTES_MAX {
        return Err(format!("agent id `{id}` is {} bytes; at most {AGENT_BYTES_MAX}: shorten it", id.len()));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '/')) {
        return Err(format!(
            "agent id `{id}` has characters the server refuses: use letters, digits, \
             '-', '_', '.', ':', '@' and '/' only"
        ));
    }
    Ok(())
}

/// A TOML or serde error from `toml::from_str`, with its key path found by
/// walking the document's spans.
fn toml_error(source: &str, lines: &LineIndex, error: &toml::de::Error) -> WorkflowFileError {
    let at = error.span().map_or(0, |span| span.start);
    let message = error.message().trim_end();
    match toml::de::DeTable::parse(source) {
        // The document parses: the error is about a key or a value.
        Ok(table) => {
            let path = key_path(table.get_ref(), at).unwrap_or_default().join(".");
            let message = if message.starts_with("unknown field") {
                message.replacen("unknown field", "unknown key", 1)
            } else if path.is_empty() {
                message.to_owned()
            } else {
                format!("`{path}`: {message}")
            };
            lines.error(at, &path, message)
        }
        Err(_) if message == "duplicate key" => lines.error(
            at,
            "",
            "invalid TOML: duplicate key: each key and each [table] may appear once; merge the two"
                .to_owned(),
        ),
        Err(_) => lines.error(at, "", format!("invalid TOML: {message}")),
    }
}

/// The keys leading to the key or value at byte `at`, innermost last.
fn key_path(table: &toml::de::DeTable<'_>, at: usize) -> Option<Vec<String>> {
    for (key, value) in table {
        if key.span().contains(&at) {
            return Some(vec![key.get_ref().to_string()]);
        }
        let inner = match value.get_ref() {
            toml::de::DeValue::Table(inner) => key_path(inner, at),
            toml::de::DeValue::Array(items) => items.iter().find_map(|item| match item.get_ref() {
                toml::de::DeValue::Table(inner) => key_path(inner, at),
                _ => None,
            }),
            _ => None,
        };
        if let Some(mut inner) = inner {
            inner.insert(0, key.get_ref().to_string());
            return Some(inner);
        }
        if value.span().contains(&at) {
            return Some(vec![key.get_ref().to_string()]);
        }
    }
    None
}

/// Byte offsets to 1-based lines and columns (columns in characters).
struct LineIndex {
    /// Byte offset of each line's first character.
    starts: Vec<usize>,
    source: String,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let starts = std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { starts, source: source.to_owned() }
    }

    fn position(&self, at: usize) -> (u32, u32) {
        let at = at.min(self.source.len());
        let line = self.starts.partition_point(|&start| start <= at).saturating_sub(1);
        let start = self.starts.get(line).copied().unwrap_or(0);
        let column = self.source.get(start..at).map_or(at - start, |text| text.chars().count());
        (u32::try_from(line + 1).unwrap_or(u32::MAX), u32::try_from(column + 1).unwrap_or(u32::MAX))
    }

    fn error(&self, at: usize, field: &str, message: String) -> WorkflowFileError {
        let (line, column) = self.position(at);
        WorkflowFileError { line, column, field: field.to_owned(), message }
    }
}

// ---------------------------------------------------------------------------
// Rendering helpers.

/// The entry first, then the stages reached from it (routes, `next`,
/// reroutes, compensations, escalations) breadth first, then the rest by name.
fn stage_order(wf: &Workflow) -> Vec<&StageName> {
    let mut order: Vec<&StageName> = Vec::new();
    let mut placed = BTreeSet::new();
    let mut queue = std::collections::VecDeque::from([&wf.entry]);
    while let Some(name) = queue.pop_front() {
        let Some((name, stage)) = wf.stages.get_key_value(name) else { continue };
        if !placed.insert(name) {
            continue;
        }
        order.push(name);
        let p = &stage.policy;
        queue.extend(stage.routes.iter());
        queue.extend([&stage.next, &p.reroute_to, &stage.compensate, &p.escalate_to].into_iter().flatten());
    }
    order.extend(wf.stages.keys().filter(|name| !placed.contains(name)));
    order
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A table key: bare when TOML allows it, quoted otherwise (`"a.b"`).
fn key(text: &str) -> String {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        text.to_owned()
    } else {
        quote(text)
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(quote).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
#[path = "workflow_tests.rs"]
mod tests;
