//! A workflow version drawn as an SVG graph, on the server: stages in
//! columns by their distance from the entry (routes, the default next
//! stage and the ladder's reroutes and escalations), compensation stages in
//! a last column, and one arrow per route, ladder step and compensation.
//! The page also lists every stage's ladder in a table, which is what a
//! screen reader reads; the drawing has a text description.

use crate::ui::html::{dur, e};
use baton_api::WorkflowView;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

const NODE_W: i64 = 180;
const NODE_H: i64 = 58;
const COL_GAP: i64 = 90;
const ROW_GAP: i64 = 34;
const PAD: i64 = 16;
/// Characters of a stage name drawn; longer names are cut (the table has them whole).
const NAME_CHARS_MAX: usize = 22;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Next,
    Route,
    Reroute,
    Escalate,
    Compensate,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::Next => "next",
            Kind::Route => "route",
            Kind::Reroute => "reroute",
            Kind::Escalate => "escalate",
            Kind::Compensate => "compensate",
        }
    }
}

/// The SVG of `w`.
pub fn render(w: &WorkflowView) -> String {
    // Every edge, once per (from, to), the strongest kind kept.
    let mut edges: BTreeMap<(String, String), Kind> = BTreeMap::new();
    let mut add = |from: &str, to: &str, kind: Kind| {
        let slot = edges.entry((from.to_owned(), to.to_owned())).or_insert(kind);
        *slot = (*slot).min(kind);
    };
    for (name, s) in &w.stages {
        if let Some(next) = &s.next {
            add(name, next, Kind::Next);
        }
        for r in &s.routes {
            add(name, r, Kind::Route);
        }
        if let Some(c) = &s.canary {
            add(name, &c.stage, Kind::Route);
        }
        if let Some(r) = &s.policy.reroute_to {
            add(name, r, Kind::Reroute);
        }
        if let Some(x) = &s.policy.escalate_to {
            add(name, x, Kind::Escalate);
        }
        if let Some(c) = &s.compensate {
            add(name, c, Kind::Compensate);
        }
    }
    let compensation: BTreeSet<&str> = w.stages.values().filter_map(|s| s.compensate.as_deref()).collect();

    // Columns: breadth first from the entry over everything but compensation.
    let mut column: BTreeMap<String, i64> = BTreeMap::new();
    let mut queue = VecDeque::from([(w.entry.clone(), 0)]);
    while let Some((stage, depth)) = queue.pop_front() {
        if column.contains_key(&stage) {
            continue;
        }
        column.insert(stage.clone(), depth);
        for ((from, to), kind) in &edges {
            // The work flows left to right; escalations and compensation
            // lead to the columns after it.
            let flows = matches!(kind, Kind::Next | Kind::Route | Kind::Reroute);
            if *from == stage && flows && !column.contains_key(to) {
                queue.push_back((to.clone(), depth + 1));
            }
        }
    }
    let last = column.values().copied().max().unwrap_or(0);
    let mut all: BTreeSet<String> = w.stages.keys().cloned().collect();
    all.extend(edges.keys().flat_map(|(a, b)| [a.clone(), b.clone()]));
    for stage in &all {
        if !column.contains_key(stage) {
            let col = if compensation.contains(stage.as_str()) { last + 2 } else { last + 1 };
            column.insert(stage.clone(), col);
        }
    }
    let mut rows: BTreeMap<i64, i64> = BTreeMap::new();
    let mut at: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    // The entry first, then by name, so the drawing is stable.
    let mut order: Vec<&String> = all.iter().collect();
    order.sort_by_key(|s| (*s != &w.entry, (*s).clone()));
    for stage in order {
        let col = column[stage];
        let row = rows.entry(col).or_insert(0);
        at.insert(stage.clone(), (PAD + col * (NODE_W + COL_GAP), PAD + *row * (NODE_H + ROW_GAP)));
        *row += 1;
    }
    let width = PAD * 2 + (column.values().copied().max().unwrap_or(0) + 1) * (NODE_W + COL_GAP) - COL_GAP;
    let height = PAD * 2 + rows.values().copied().max().unwrap_or(1) * (NODE_H + ROW_GAP) - ROW_GAP;

    let mut svg = format!(
        "<svg class=\"workflow\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" \
         aria-labelledby=\"wf-title wf-desc\" xmlns=\"http://www.w3.org/2000/svg\"><title id=\"wf-title\">Workflow {}</title><desc id=\"wf-desc\">",
        e(&w.name)
    );
    for ((from, to), kind) in &edges {
        let _ = write!(svg, "{} to {} ({}). ", e(from), e(to), kind.class());
    }
    svg.push_str("</desc><defs>");
    for kind in [Kind::Next, Kind::Route, Kind::Reroute, Kind::Escalate, Kind::Compensate] {
        let _ = write!(
            svg,
            "<marker id=\"arrow-{0}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"9\" markerHeight=\"9\" \
             markerUnits=\"userSpaceOnUse\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" class=\"head-{0}\"/></marker>",
            kind.class()
        );
    }
    svg.push_str("</defs>");
    for ((from, to), kind) in &edges {
        let (Some(&(ax, ay)), Some(&(bx, by))) = (at.get(from), at.get(to)) else { continue };
        let (x1, y1, x2, y2) = if bx > ax {
            (ax + NODE_W, ay + NODE_H / 2, bx, by + NODE_H / 2)
        } else if bx < ax {
            (ax, ay + NODE_H / 2, bx + NODE_W, by + NODE_H / 2)
        } else if by > ay {
            (ax + NODE_W / 2, ay + NODE_H, bx + NODE_W / 2, by)
        } else {
            (ax + NODE_W / 2, ay, bx + NODE_W / 2, by + NODE_H)
        };
        let bend = if bx == ax { 0 } else { 40 * (x2 - x1).signum() };
        let lift = if bx == ax { 50 } else { 0 };
        let _ = write!(
            svg,
            "<path class=\"edge {c}\" d=\"M{x1},{y1} C{},{},{},{} {x2},{y2}\" marker-end=\"url(#arrow-{c})\"/>",
            x1 + bend + lift,
            y1,
            x2 - bend + lift,
            y2,
            c = kind.class()
        );
    }
    for (stage, (x, y)) in &at {
        let declared = w.stages.get(stage);
        let human = declared.is_some_and(|s| s.human);
        let class = if human {
            "node human"
        } else if compensation.contains(stage.as_str()) {
            "node compensation"
        } else if declared.is_none() {
            "node outside"
        } else {
            "node"
        };
        let name: String = stage.chars().take(NAME_CHARS_MAX).collect();
        let detail = match declared {
            Some(s) => {
                let p = &s.policy;
                format!(
                    "accept {}{} · lease {}",
                    dur(p.accept_within_ms),
                    if p.reoffers > 0 { format!(" ×{}", p.reoffers + 1) } else { String::new() },
                    dur(p.lease_ms)
                )
            }
            None => "outside the workflow".to_owned(),
        };
        let _ = write!(
            svg,
            "<g class=\"{class}\"><rect x=\"{x}\" y=\"{y}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"8\"/>\
             <text x=\"{}\" y=\"{}\" class=\"name\">{}{}</text><text x=\"{}\" y=\"{}\" class=\"detail\">{}</text></g>",
            x + 10,
            y + 24,
            e(&name),
            if human {
                " (human)"
            } else if *stage == w.entry {
                " (entry)"
            } else {
                ""
            },
            x + 10,
            y + 44,
            e(&detail)
        );
    }
    svg.push_str("</svg>");
    svg
}
