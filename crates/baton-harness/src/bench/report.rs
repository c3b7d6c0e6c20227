//! Summaries of a run set: per agent count and system, the median and range
//! of each figure over the interleaved rounds, Baton's ratios to each
//! baseline, and the Markdown table. Ratios are the figures that carry across
//! machines and days (docs/glossary.md, same-run baseline), so each is the ratio of the
//! medians, with the range of the per-round ratios (Baton's round i over the
//! baseline's round i, measured minutes apart) beside it.

use super::{BenchConfig, BenchReport, RunResult, System};
use serde::Serialize;
use std::fmt::Write as _;

/// A figure over the rounds of one system.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub(crate) fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Self { median, min: values[0], max: values[n - 1] })
    }

    /// `median [min–max]` with `digits` decimals, or just the median when
    /// every round gave the same figure.
    pub(crate) fn show(self, digits: usize) -> String {
        if self.min == self.max {
            format!("{:.digits$}", self.median)
        } else {
            format!("{:.digits$} [{:.digits$}–{:.digits$}]", self.median, self.min, self.max)
        }
    }
}

/// The figures summarised, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    HandoffsPerS,
    StepP50Us,
    StepP99Us,
    FlushesPerHandoff,
    WrittenKibPerHandoff,
    CpuSPer1kHandoffs,
    HandoffsPerTransaction,
    WriterBusy,
    ForeignCpuSeconds,
}

impl Metric {
    pub const ALL: [Metric; 9] = [
        Metric::HandoffsPerS,
        Metric::StepP50Us,
        Metric::StepP99Us,
        Metric::FlushesPerHandoff,
        Metric::WrittenKibPerHandoff,
        Metric::CpuSPer1kHandoffs,
        Metric::HandoffsPerTransaction,
        Metric::WriterBusy,
        Metric::ForeignCpuSeconds,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::HandoffsPerS => "handoffs/s (higher is better)",
            Self::StepP50Us => "step latency p50, µs",
            Self::StepP99Us => "step latency p99, µs",
            Self::FlushesPerHandoff => "device flushes per handoff",
            Self::WrittenKibPerHandoff => "KiB written per handoff (WAL + checkpoints)",
            Self::CpuSPer1kHandoffs => "CPU s per 1,000 handoffs (whole process)",
            Self::HandoffsPerTransaction => "handoffs per transaction",
            Self::WriterBusy => "writer thread busy (share of one core)",
            Self::ForeignCpuSeconds => "other processes' CPU during the run, s",
        }
    }

    fn of(self, r: &RunResult) -> Option<f64> {
        match self {
            Self::HandoffsPerS => Some(r.handoffs_per_s),
            Self::StepP50Us => Some(r.step_p50_us),
            Self::StepP99Us => Some(r.step_p99_us),
            Self::FlushesPerHandoff => r.flushes_per_handoff,
            Self::WrittenKibPerHandoff => Some(r.written_kib_per_handoff),
            Self::CpuSPer1kHandoffs => Some(r.cpu_s_per_1k_handoffs),
            Self::HandoffsPerTransaction => r.handoffs_per_transaction,
            Self::WriterBusy => r.writer_busy,
            Self::ForeignCpuSeconds => Some(r.foreign_cpu_seconds),
        }
    }

    /// Whether a ratio to a baseline says something (the noise figure does not).
    fn has_ratio(self) -> bool {
        !matches!(self, Self::ForeignCpuSeconds | Self::HandoffsPerTransaction | Self::WriterBusy)
    }

    fn format(self, v: f64) -> String {
        match self {
            Self::HandoffsPerS => thousands(v),
            Self::StepP50Us | Self::StepP99Us => {
                if v >= 1_000.0 {
                    thousands(v)
                } else {
                    format!("{v:.0}")
                }
            }
            Self::FlushesPerHandoff => format!("{v:.3}"),
            Self::WrittenKibPerHandoff => format!("{v:.1}"),
            Self::CpuSPer1kHandoffs => format!("{v:.3}"),
            Self::HandoffsPerTransaction => format!("{v:.1}"),
            Self::WriterBusy => format!("{:.0}%", v * 100.0),
            Self::ForeignCpuSeconds => format!("{v:.2}"),
        }
    }
}

/// One figure of one system: its rounds' median and range.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub system: System,
    pub metric: Metric,
    #[serde(flatten)]
    pub stat: Stat,
}

/// Baton's figure over a baseline's.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub metric: Metric,
    pub baseline: System,
    /// Baton's median over the baseline's median.
    pub of_medians: f64,
    /// The range of Baton's round-i figure over the baseline's round-i figure.
    pub round_min: f64,
    pub round_max: f64,
}

/// Everything summarised for one agent count.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub agents: usize,
    pub tasks: usize,
    pub rounds: usize,
    pub figures: Vec<Figure>,
    pub ratios: Vec<Ratio>,
}

pub fn summarise(config: &BenchConfig, runs: &[RunResult]) -> Vec<GroupSummary> {
    config
        .agents
        .iter()
        .map(|&agents| {
            let of = |system: System| -> Vec<&RunResult> {
                let mut v: Vec<&RunResult> =
                    runs.iter().filter(|r| r.agents == agents && r.system == system).collect();
                v.sort_by_key(|r| r.round);
                v
            };
            let mut figures = Vec::new();
            let mut ratios = Vec::new();
            for system in System::ALL {
                for metric in Metric::ALL {
                    if let Some(stat) = Stat::of(of(system).iter().filter_map(|r| metric.of(r)).collect()) {
                        figures.push(Figure { system, metric, stat });
                    }
                }
            }
            let baton = of(System::Baton);
            for baseline in [System::Raw, System::Ideal] {
                let base = of(baseline);
                for metric in Metric::ALL.into_iter().filter(|m| m.has_ratio()) {
                    let median =
                        |rs: &[&RunResult]| Stat::of(rs.iter().filter_map(|r| metric.of(r)).collect());
                    let (Some(b), Some(d)) = (median(&baton), median(&base)) else { continue };
                    let per_round: Vec<f64> = baton
                        .iter()
                        .zip(&base)
                        .filter_map(|(b, d)| Some(metric.of(b)? / metric.of(d)?))
                        .filter(|r| r.is_finite())
                        .collect();
                    let Some(rounds) = Stat::of(per_round) else { continue };
                    ratios.push(Ratio {
                        metric,
                        baseline,
                        of_medians: b.median / d.median,
                        round_min: rounds.min,
                        round_max: rounds.max,
                    });
                }
            }
            let tasks = runs.iter().find(|r| r.agents == agents).map_or(0, |r| r.tasks);
            GroupSummary { agents, tasks, rounds: config.runs, figures, ratios }
        })
        .collect()
}

/// The Markdown report: machine, method, and one table per agent count.
pub fn markdown(report: &BenchReport) -> String {
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(out, "## HB3 store-level benchmark\n");
    let _ = writeln!(
        out,
        "Machine: {} CPUs ({}), {} GiB, Linux {}, data on `{}`, SQLite {}. Started at Unix time {}.\n",
        m.cpus,
        m.cpu_model,
        m.memory_kib / (1024 * 1024),
        m.kernel,
        m.device.as_deref().unwrap_or("no block device"),
        m.sqlite,
        report.started_unix_s,
    );
    let _ = writeln!(
        out,
        "Workload: stages a → b → c → done, tasks preloaded into a with {}-byte payloads, K agents split \
         across the stages (every agent works every stage when K < 3). A task makes 3 handoffs (a→b, b→c, \
         c→done); handoffs/s = 3N ÷ (agents' start to the last completion); the preload is not timed. \
         Every handoff is fsync'd before the agent hears of it (WAL, synchronous=FULL) in all three systems. \
         Baton: one `act` (handoff or complete) with claim-next per handoff, through the `Store` trait; its \
         step latency is that call's round trip. Raw single commit: one thread, one transaction per handoff \
         (revision-guarded UPDATE + event INSERT); step = one transaction. Ideal batching writer: K agent \
         threads, separate claim and complete requests to one writer thread that commits up to 256 pending \
         requests per transaction; step = complete round trip + next claim round trip. Figures are the \
         median [min–max] of {} interleaved rounds; ratios are Baton ÷ baseline of the medians [range of \
         per-round ratios]. CPU is the whole benchmark process (agents and the system under test).\n",
        report.config.payload_bytes, report.config.runs,
    );
    for group in &report.summary {
        let _ = writeln!(
            out,
            "### K = {} agent{}, N = {} tasks ({} handoffs per run)\n",
            group.agents,
            if group.agents == 1 { "" } else { "s" },
            thousands(group.tasks as f64),
            thousands(group.tasks as f64 * 3.0),
        );
        let _ = writeln!(
            out,
            "| figure | Baton | raw single commit | Baton ÷ raw | ideal batching writer | Baton ÷ ideal |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for metric in Metric::ALL {
            let cell = |system: System| {
                group.figures.iter().find(|f| f.system == system && f.metric == metric).map_or(
                    "—".to_owned(),
                    |f| {
                        format!(
                            "{} [{}–{}]",
                            metric.format(f.stat.median),
                            metric.format(f.stat.min),
                            metric.format(f.stat.max)
                        )
                    },
                )
            };
            let ratio = |baseline: System| {
                group
                    .ratios
                    .iter()
                    .find(|r| r.metric == metric && r.baseline == baseline)
                    .map_or("—".to_owned(), |r| {
                        format!("**{:.2}** [{:.2}–{:.2}]", r.of_medians, r.round_min, r.round_max)
                    })
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                metric.label(),
                cell(System::Baton),
                cell(System::Raw),
                ratio(System::Raw),
                cell(System::Ideal),
                ratio(System::Ideal),
            );
        }
        let disturbed: Vec<String> = report
            .runs
            .iter()
            .filter(|r| r.agents == group.agents && r.disturbed)
            .map(|r| format!("{} round {}", r.system.label(), r.round + 1))
            .collect();
        if !disturbed.is_empty() {
            let _ = writeln!(
                out,
                "\nDisturbed runs (other processes above {:.0}% of a core on average): {}.",
                super::FOREIGN_CORES_MAX * 100.0,
                disturbed.join(", ")
            );
        }
        let _ = writeln!(out);
    }
    out
}

/// 12345.6 as "12,346".
fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        let check = |values: &[f64], want: (f64, f64, f64)| {
            let s = Stat::of(values.to_vec()).expect("non-empty");
            assert_eq!((s.median, s.min, s.max), want, "{values:?}");
        };
        check(&[3.0, 1.0, 2.0], (2.0, 1.0, 3.0));
        check(&[4.0, 1.0], (2.5, 1.0, 4.0));
        check(&[5.0], (5.0, 5.0, 5.0));
        assert!(Stat::of(Vec::new()).is_none());
    }

    #[test]
    fn thousands_separators() {
        for (v, want) in [(0.0, "0"), (999.4, "999"), (1_000.0, "1,000"), (1_234_567.0, "1,234,567")] {
            assert_eq!(thousands(v), want);
        }
    }
}
