//! Workflow files: parsing, errors and rendering.
//!
//! Goal: every mistake a user can make in a workflow file is refused with the
//! exact line and column of the offending key or value and a sentence that
//! says what to fix; good files parse into the model field by field; and what
//! `render_workflow` prints parses back to the same definition. Method: the
//! fixture files under `tests/workflows/` (each bad file is listed in `BAD`
//! with its expected first error, and every file there must be listed), plus
//! small sources written inline for limits, defaults and durations.

use super::*;
use std::path::{Path, PathBuf};

/// Each bad file: its first error's line, column and field, and a fragment of its message.
const BAD: &[(&str, u32, u32, &str, &str)] = &[
    ("syntax.toml", 5, 10, "", "invalid TOML: unclosed table, expected `]`"),
    (
        "unknown-key.toml",
        6,
        1,
        "stages.a.acept_within",
        "unknown key `acept_within`, expected one of `accept_within`",
    ),
    (
        "unknown-top-key.toml",
        3,
        1,
        "entry_stage",
        "unknown key `entry_stage`, expected one of `name`, `entry`",
    ),
    (
        "unknown-retry-key.toml",
        6,
        27,
        "stages.a.retry.maximum",
        "expected one of `initial`, `max`, `multiplier`",
    ),
    (
        "route-unknown.toml",
        6,
        21,
        "stages.intake.routes",
        "route to unknown stage `triaj`: declare [stages.triaj]",
    ),
    (
        "next-unknown.toml",
        6,
        8,
        "stages.intake.next",
        "`next` names unknown stage `triage`: declare [stages.triage]",
    ),
    (
        "next-not-in-routes.toml",
        7,
        8,
        "stages.intake.next",
        "`next` = `billing` is not one of this stage's routes",
    ),
    ("missing-entry.toml", 1, 1, "entry", "missing `entry`: name the stage new tasks start in"),
    ("missing-name.toml", 1, 1, "name", "missing `name`: give the workflow a name"),
    ("entry-undeclared.toml", 3, 9, "entry", "entry stage `intake` is not declared: add [stages.intake]"),
    ("cycle.toml", 7, 8, "stages.draft.next", "stages draft, review, revise form a cycle with no way out"),
    ("reroute-cycle.toml", 10, 8, "stages.b.next", "stages b, c form a cycle with no way out"),
    (
        "escalate-unknown.toml",
        6,
        15,
        "stages.intake.escalate_to",
        "names unknown stage `front-desk`: declare",
    ),
    (
        "escalate-not-human.toml",
        6,
        15,
        "stages.intake.escalate_to",
        "`triage` is not a human stage: set `human = true`",
    ),
    ("reroute-self.toml", 6, 14, "stages.specialist.reroute_to", "a stage cannot reroute to itself"),
    ("route-self.toml", 6, 11, "stages.a.routes", "stage `a` routes to itself"),
    ("route-twice.toml", 6, 16, "stages.a.routes", "`b` is listed twice in `routes`"),
    ("duration-bare.toml", 6, 17, "stages.a.accept_within", "a bare number (30) is not a duration"),
    ("duration-unit.toml", 6, 9, "stages.a.lease", "duration \"1w\" has an unknown unit \"w\""),
    ("duration-negative.toml", 6, 21, "stages.a.retry.initial", "duration \"-1s\" is negative"),
    ("lease-limits.toml", 6, 9, "stages.a.lease", "`lease` 2d is outside the lease limits 1s..=1d"),
    ("defaults-lease.toml", 6, 9, "defaults.lease", "`lease` 100ms is outside the lease limits"),
    ("accept-within-zero.toml", 6, 17, "stages.a.accept_within", "`accept_within` must be longer than 0"),
    ("max-attempts-zero.toml", 6, 16, "stages.a.max_attempts", "`max_attempts` must be at least 1"),
    ("multiplier-zero.toml", 6, 52, "stages.a.retry.multiplier", "`retry.multiplier` must be at least 1"),
    (
        "retry-initial-over-max.toml",
        6,
        9,
        "stages.a.retry",
        "`retry.initial` 2m is longer than `retry.max` 1m",
    ),
    ("capacity-zero.toml", 6, 12, "stages.a.capacity", "capacity 0 would let nobody claim"),
    ("canary-not-a-route.toml", 8, 10, "stages.a.canary", "`canary` = `c` is not one of this stage's routes"),
    ("canary-percent.toml", 9, 18, "stages.a.canary_percent", "`canary_percent` is 100"),
    (
        "compensate-unknown.toml",
        6,
        14,
        "stages.billing.compensate",
        "`compensate` names unknown stage `refund`",
    ),
    (
        "compensate-last-stage.toml",
        11,
        14,
        "stages.billing.compensate",
        "`compensate` on `billing` can never run: a task leaves `billing` only by finishing",
    ),
    ("duplicate-stage.toml", 8, 9, "", "duplicate key: each key and each [table] may appear once"),
    (
        "stage-name.toml",
        5,
        9,
        "stages.front desk",
        "stage name `front desk` has characters the server refuses",
    ),
    ("workflow-name.toml", 2, 8, "name", "workflow name `clinic/intake` contains '/'"),
    (
        "agent-name.toml",
        6,
        25,
        "stages.intake.agents",
        "agent id `intake bot` has characters the server refuses",
    ),
    ("too-many-stages.toml", 261, 9, "stages.s64", "65 stages declared; a workflow holds at most 64"),
    (
        "wrong-type.toml",
        6,
        16,
        "stages.a.max_attempts",
        "invalid type: string \"3\", expected a whole number",
    ),
    ("human-not-bool.toml", 6, 9, "stages.a.human", "invalid type: string \"yes\", expected a boolean"),
];

#[test]
fn bad_files_are_refused_at_the_offending_value() {
    assert!(BAD.len() >= 20);
    let mut listed: Vec<&str> = BAD.iter().map(|(file, ..)| *file).collect();
    listed.sort_unstable();
    assert_eq!(toml_files("bad"), listed, "every file in tests/workflows/bad is listed in BAD, once");
    for &(file, line, column, field, fragment) in BAD {
        let errors = parse(&read(&fixtures("bad").join(file))).expect_err(file);
        check(file, &errors[0], (line, column, field, fragment));
    }
}

#[test]
fn limits_come_from_the_caller() {
    let limits = Limits { lease_ttl_ms_max: 60_000, stage_bytes_max: 4, ..Limits::default() };
    let source = "name = \"w\"\nentry = \"triage\"\n\n[stages.triage]\nlease = \"2m\"\n";
    assert!(parse(source).is_ok(), "fine under the default limits");
    let errors = parse_workflow(source, &Policies::default(), &limits).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    check(
        "stage_bytes_max",
        &errors[0],
        (4, 9, "stages.triage", "stage name `triage` is 6 bytes; at most 4"),
    );
    check(
        "lease_ttl_ms_max",
        &errors[1],
        (5, 9, "stages.triage.lease", "`lease` 2m is outside the lease limits 1s..=1m"),
    );
}

#[test]
fn oversized_files_are_refused_before_parsing() {
    let source =
        format!("name = \"big\"\nentry = \"a\"\n[stages.a]\n#{}\n", "x".repeat(WORKFLOW_FILE_BYTES_MAX));
    let errors = parse(&source).unwrap_err();
    assert_eq!(errors.len(), 1);
    check(
        "oversized",
        &errors[0],
        (1, 1, "", "a workflow file holds at most 262144 bytes (WORKFLOW_FILE_BYTES_MAX)"),
    );
}

#[test]
fn every_error_is_reported_sorted_by_position() {
    let source = "\
name = \"many\"
entry = \"a\"

[stages.a]
routes = [\"b\", \"nowhere\"]
lease = \"1ms\"
max_attempts = 0

[stages.b]
escalate_to = \"a\"
";
    let errors = parse(source).unwrap_err();
    let found: Vec<(u32, u32, &str)> = errors.iter().map(|e| (e.line, e.column, e.field.as_str())).collect();
    assert_eq!(
        found,
        [
            (5, 16, "stages.a.routes"),
            (6, 9, "stages.a.lease"),
            (7, 16, "stages.a.max_attempts"),
            (10, 15, "stages.b.escalate_to"),
        ],
        "{errors:#?}"
    );
    assert_eq!(errors[0].to_string(), format!("5:16: {}", errors[0].message));
}

#[test]
fn past_the_error_limit_one_line_says_how_many_more() {
    let mut source = String::from("name = \"many\"\nentry = \"s0\"\n");
    for i in 0..60 {
        source.push_str(&format!("[stages.s{i}]\nlease = \"1ms\"\nmax_attempts = 0\n"));
    }
    let errors = parse(&source).unwrap_err();
    assert_eq!(errors.len(), WORKFLOW_ERRORS_MAX + 1);
    let last = &errors[WORKFLOW_ERRORS_MAX];
    // Stage s50 starts on line 3 + 50 * 3; its lease is the 101st error.
    check(
        "left out",
        last,
        (154, 9, "stages.s50.lease", "20 more errors left out (WORKFLOW_ERRORS_MAX = 100)"),
    );
}

#[test]
fn the_minimal_file_takes_the_global_default_policy() {
    let global = Policies {
        default: StagePolicy { lease_ms: 45_000, max_attempts: 7, ..StagePolicy::default() },
        ..Policies::default()
    };
    let wf =
        parse_workflow(&read(&fixtures("good").join("minimal.toml")), &global, &Limits::default()).unwrap();
    assert_eq!((wf.name.as_str(), wf.version, wf.entry.as_str()), ("minimal", 0, "work"));
    assert_eq!(wf.stages.len(), 1);
    assert_eq!(
        wf.stages[&stage("work")],
        WorkflowStage { policy: global.default.clone(), ..WorkflowStage::default() }
    );
}

#[test]
fn every_key_lands_in_the_model() {
    let wf = parse(&read(&fixtures("good").join("all-keys.toml"))).unwrap();
    assert_eq!((wf.name.as_str(), wf.version, wf.entry.as_str()), ("all-keys", 0, "intake"));
    let defaults = StagePolicy {
        accept_within_ms: 45_000,
        lease_ms: 90_000,
        deadline_near_ms: 3_600_000,
        max_attempts: 4,
        retry: Backoff { initial_ms: 2_000, max_ms: 120_000, multiplier: 3 },
        reoffers: 2,
        escalate_to: Some(stage("front-desk")),
        ..StagePolicy::default()
    };
    let expected = [
        (
            "intake",
            WorkflowStage {
                policy: StagePolicy {
                    accept_within_ms: 30_000,
                    lease_ms: 120_000,
                    deadline_near_ms: 600_000,
                    max_attempts: 3,
                    retry: Backoff { initial_ms: 1_000, max_ms: 60_000, multiplier: 2 },
                    reoffers: 1,
                    reroute_to: Some(stage("intake-backup")),
                    escalate_to: Some(stage("front-desk")),
                    human: false,
                },
                routes: vec![stage("triage")],
                next: Some(stage("triage")),
                compensate: Some(stage("undo-intake")),
                agents: vec!["intake-bot".to_owned(), "intake-bot-2".to_owned()],
                capacity: Some(10),
                canary: None,
            },
        ),
        (
            "intake-backup",
            WorkflowStage {
                policy: defaults.clone(),
                routes: vec![stage("triage")],
                next: Some(stage("triage")),
                ..WorkflowStage::default()
            },
        ),
        (
            "triage",
            WorkflowStage {
                policy: StagePolicy {
                    retry: Backoff { initial_ms: 500, ..defaults.retry.clone() },
                    ..defaults.clone()
                },
                ..WorkflowStage::default()
            },
        ),
        (
            "undo-intake",
            WorkflowStage {
                policy: StagePolicy { lease_ms: 86_400_000, ..defaults.clone() },
                ..WorkflowStage::default()
            },
        ),
        // A human stage keeps the file's defaults but not its escalation target.
        (
            "front-desk",
            WorkflowStage {
                policy: StagePolicy { human: true, escalate_to: None, ..defaults.clone() },
                ..WorkflowStage::default()
            },
        ),
        (
            "lab.results/v2",
            WorkflowStage {
                policy: StagePolicy { escalate_to: Some(stage("inbox")), ..defaults.clone() },
                ..WorkflowStage::default()
            },
        ),
    ];
    assert_eq!(wf.stages.len(), expected.len());
    for (name, stage_def) in expected {
        assert_eq!(wf.stages[&stage(name)], stage_def, "stage {name}");
    }
}

#[test]
fn a_human_stage_without_accept_within_waits_a_day() {
    let source =
        "name = \"h\"\nentry = \"a\"\n[stages.a]\nescalate_to = \"desk\"\n[stages.desk]\nhuman = true\n";
    let wf = parse(source).unwrap();
    assert_eq!(wf.stages[&stage("desk")].policy.accept_within_ms, StagePolicy::human().accept_within_ms);
    assert!(wf.stages[&stage("desk")].policy.human);
}

#[test]
fn the_patient_intake_example_validates() {
    let wf = parse(&read(&example())).unwrap();
    assert_eq!((wf.name.as_str(), wf.entry.as_str()), ("patient-intake", "intake"));
    let names: Vec<&str> = wf.stages.keys().map(StageName::as_str).collect();
    assert_eq!(
        names,
        [
            "billing",
            "discharge",
            "front-desk",
            "intake",
            "notify-email",
            "notify-sms",
            "refund",
            "specialist",
            "specialist-backup",
            "triage"
        ]
    );
    let s = |name: &str| &wf.stages[&stage(name)];
    let path: Vec<(&str, Option<&str>)> =
        ["intake", "triage", "specialist", "specialist-backup", "billing", "discharge"]
            .into_iter()
            .map(|name| (name, s(name).next.as_ref().map(StageName::as_str)))
            .collect();
    assert_eq!(
        path,
        [
            ("intake", Some("triage")),
            ("triage", Some("specialist")),
            ("specialist", Some("billing")),
            ("specialist-backup", Some("billing")),
            ("billing", Some("discharge")),
            ("discharge", None)
        ]
    );
    assert_eq!(s("triage").routes, [stage("specialist"), stage("front-desk")]);
    assert_eq!(s("specialist").policy.reroute_to, Some(stage("specialist-backup")));
    assert_eq!((s("specialist").policy.lease_ms, s("specialist").capacity), (600_000, Some(5)));
    assert_eq!(s("billing").compensate, Some(stage("refund")));
    assert_eq!(s("refund").policy.max_attempts, 5);
    assert_eq!(s("intake").policy.accept_within_ms, 30_000);
    assert_eq!(s("intake").agents, ["intake-bot"]);
    for name in ["intake", "triage", "specialist", "billing", "notify-email", "notify-sms", "refund"] {
        assert_eq!(
            s(name).policy.escalate_to,
            Some(stage("front-desk")),
            "{name} escalates to the front desk"
        );
        assert!(!s(name).policy.human);
    }
    let desk = &s("front-desk").policy;
    assert!(desk.human && desk.escalate_to.is_none());
    assert_eq!(desk.accept_within_ms, 4 * 3_600_000);
    for child in ["notify-email", "notify-sms"] {
        assert!(
            s(child).next.is_none() && s(child).routes.is_empty(),
            "{child}: completing a child finishes it"
        );
    }
}

#[test]
fn rendered_workflows_parse_back_to_the_same_definition() {
    let mut sources: Vec<PathBuf> = toml_files("good").iter().map(|f| fixtures("good").join(f)).collect();
    sources.push(example());
    for path in sources {
        let wf = parse(&read(&path)).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        let text = render_workflow(&wf);
        // Parsed with other defaults, the rendered file still means the same:
        // it writes every policy value out.
        let other = Policies {
            default: StagePolicy { lease_ms: 3_000, max_attempts: 9, ..StagePolicy::default() },
            ..Policies::default()
        };
        let back = parse_workflow(&text, &other, &Limits::default())
            .unwrap_or_else(|e| panic!("{} rendered:\n{text}\n{e:?}", path.display()));
        assert!(back.same_definition(&wf), "{} rendered:\n{text}", path.display());
        assert_eq!(back, wf);
        assert_eq!(render_workflow(&back), text, "rendering is stable");
    }
}

#[test]
fn rendering_starts_at_the_entry_and_quotes_what_needs_it() {
    let wf = parse(&read(&fixtures("good").join("all-keys.toml"))).unwrap();
    let text = render_workflow(&wf);
    assert!(
        text.starts_with(
            "name = \"all-keys\"\nentry = \"intake\"\n\n[stages.intake]\naccept_within = \"30s\"\n"
        ),
        "{text}"
    );
    assert!(text.contains("[stages.\"lab.results/v2\"]\n"), "{text}");
    assert!(text.contains("retry = { initial = \"500ms\", max = \"2m\", multiplier = 3 }\n"), "{text}");
}

#[test]
fn durations_read_and_write_in_every_unit() {
    for (text, ms) in
        [("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("2h", 7_200_000), ("1d", 86_400_000), ("0s", 0)]
    {
        assert_eq!(parse_duration(text), Ok(ms), "{text}");
        assert_eq!(format_duration(ms), text);
    }
    assert_eq!(format_duration(90_000), "90s");
    assert_eq!(format_duration(1_500), "1500ms");
    assert_eq!(format_duration(3 * 86_400_000), "3d");
    for (text, fragment) in [
        ("30", "has no unit"),
        ("5 m", "unknown unit \" m\""),
        ("1.5s", "unknown unit \".5s\""),
        ("-1s", "is negative"),
        ("s", "is not a duration"),
        ("", "is not a duration"),
        ("99999999999999999999d", "is too long"),
        ("9999999999999999d", "is too long"),
    ] {
        let error = parse_duration(text).unwrap_err();
        assert!(error.contains(fragment), "{text:?}: {error}");
    }
}

fn check(what: &str, error: &WorkflowFileError, (line, column, field, fragment): (u32, u32, &str, &str)) {
    assert_eq!((error.line, error.column, error.field.as_str()), (line, column, field), "{what}: {error:?}");
    assert!(error.message.contains(fragment), "{what}: {:?} does not contain {fragment:?}", error.message);
}

fn parse(source: &str) -> Result<Workflow, Vec<WorkflowFileError>> {
    parse_workflow(source, &Policies::default(), &Limits::default())
}

fn stage(name: &str) -> StageName {
    StageName::new(name)
}

fn fixtures(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workflows").join(kind)
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/patient-intake/workflow.toml")
}

fn toml_files(kind: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures(kind))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    names.sort_unstable();
    names
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_canary_route_parses_and_renders_back() {
    let source = "name = \"w\"\nentry = \"a\"\n[stages.a]\nroutes = [\"b\", \"b2\"]\nnext = \"b\"\n\
                  canary = \"b2\"\ncanary_percent = 10\n[stages.b]\n[stages.b2]\n";
    let wf = parse(source).unwrap();
    let canary = wf.stages[&stage("a")].canary.clone().expect("a canary");
    assert_eq!((canary.stage.as_str(), canary.percent), ("b2", 10));
    let again = parse(&render_workflow(&wf)).unwrap();
    assert!(again.same_definition(&wf), "{}", render_workflow(&wf));
    let errors = parse("name = \"w\"\nentry = \"a\"\n[stages.a]\ncanary = \"b\"\n[stages.b]\n").unwrap_err();
    assert!(errors[0].message.contains("needs `canary_percent`"), "{errors:?}");
}
