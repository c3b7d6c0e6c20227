//! The patients of a run and what their cases hold. Each payload carries the
//! facts the agents act on, so the agents decide from the task as any real
//! agent would: triage sends an unclear complaint to the front desk, and a
//! lapsed insurance aborts the case after billing (the charge is refunded).
//! Which patient gets which case is fixed by its number, so every run with
//! the same count has the same expected outcome.

use serde_json::{Value, json};

/// What happens to a patient's case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    /// Intake, triage, specialist (rerouted to the backup), notify, billing: done.
    Routine,
    /// Triage cannot decide: handed to the front desk, where it waits for a person.
    Unclear,
    /// Insurance lapsed: aborted after billing, the charge refunded.
    Lapsed,
}

impl Case {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routine => "routine",
            Self::Unclear => "unclear",
            Self::Lapsed => "lapsed",
        }
    }
}

/// One patient of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    /// `P-001`, ...
    pub id: String,
    pub case: Case,
}

/// The patients of a run of `count`: every seventh (from the fourth) unclear,
/// every fifth (from the fifth) lapsed, the rest routine.
pub fn plan(count: usize) -> Vec<Patient> {
    (0..count)
        .map(|i| {
            let case = if i % 7 == 3 {
                Case::Unclear
            } else if i % 5 == 4 {
                Case::Lapsed
            } else {
                Case::Routine
            };
            Patient { id: format!("P-{:03}", i + 1), case }
        })
        .collect()
}

impl Patient {
    /// The task's payload: the facts of the case.
    pub fn payload(&self) -> Value {
        let complaint = match self.case {
            Case::Unclear => "unclear",
            Case::Routine | Case::Lapsed => "chest pain",
        };
        let insurance = if self.case == Case::Lapsed { "lapsed" } else { "active" };
        json!({ "patient": self.id, "complaint": complaint, "insurance": insurance, "fee": 120 })
    }
}

/// Whether a payload's complaint is one triage cannot decide.
pub fn is_unclear(payload: &Value) -> bool {
    payload["complaint"] == "unclear"
}

/// Whether a payload's insurance has lapsed.
pub fn is_lapsed(payload: &Value) -> bool {
    payload["insurance"] == "lapsed"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_patients_have_every_case() {
        let plan = plan(20);
        let count = |case| plan.iter().filter(|p| p.case == case).count();
        assert_eq!((count(Case::Routine), count(Case::Unclear), count(Case::Lapsed)), (13, 3, 4));
        assert!(plan.iter().all(|p| is_unclear(&p.payload()) == (p.case == Case::Unclear)));
        assert!(plan.iter().all(|p| is_lapsed(&p.payload()) == (p.case == Case::Lapsed)));
    }
}
