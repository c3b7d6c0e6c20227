//! Log correlation: every API request runs in a `request` span (method,
//! route, and, once a handler knows them, the task's id and its W3C trace id),
//! so each log line of a request about a task (the refusal log among them)
//! carries `task` and `trace_id` in its span fields; with `--log-format json`
//! a log pipeline joins them to the task's trace. `task_changed` writes one
//! debug line per committed change a request made (target `baton::task`:
//! `RUST_LOG=baton::task=debug`). The trace id is taken from the task's
//! `trace` (a `traceparent`) only when it is well formed. Spans are exported
//! over OTLP by `crate::otlp`.

use baton_core::Task;
use tracing::Span;
use tracing::field::Empty;

/// The span a request runs in; handlers fill `task` and `trace_id`.
pub fn request_span(method: &str, route: &str) -> Span {
    tracing::info_span!("request", method, route, task = Empty, trace_id = Empty)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// if it is one: lowercase hex, not all zeros.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace)
}

/// Records the task (and its trace id, when it has one) in the current request's span.
pub fn record_task(task: impl std::fmt::Display, trace: Option<&str>) {
    let span = Span::current();
    span.record("task", tracing::field::display(task));
    if let Some(id) = trace.and_then(trace_id) {
        span.record("trace_id", id);
    }
}

/// One debug line for a committed change a request made to `task`.
pub fn task_changed(task: &Task, what: &'static str) {
    let trace_id = task.trace.as_deref().and_then(trace_id).unwrap_or("");
    tracing::debug!(
        target: "baton::task",
        task = %task.id,
        stage = %task.stage,
        state = task.state_name().as_str(),
        trace_id,
        "{what}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id(bad), None, "{bad:?}");
        }
    }
}
