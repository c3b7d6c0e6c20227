//! The patient-intake example (`examples/patient-intake`) against a real
//! `baton dev`, as CI runs it.
//!
//! Goal: the seed's scenario holds end to end: patients through intake,
//! triage and a specialist who never answers (rerouted to the backup), a
//! notify fan-out to email and SMS joined on `any` with a mailer that
//! crashes mid-task and an SMS gateway that answers late, billing with
//! aborts and their compensation; every task ends done, aborted with its
//! compensation, or in the human inbox, none is lost, each history is
//! complete and chained. Method: start `baton dev` (support's server, a temp
//! data directory, a free port), call the example's library `run` in
//! process against it (the same code its `main` runs), and assert the
//! report: no violation, and the counts the example's fixed plan of 20
//! patients calls for. Bounded: the run has `RUN_WITHIN`.

use super::support::Server;
use std::time::Duration;

/// The longest the run (apply, agents, settle wait, checks) may take.
const RUN_WITHIN: Duration = Duration::from_secs(55);
/// The example's own bound on waiting for every task to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(40);

#[test]
fn the_patient_intake_example_holds_against_baton_dev() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let options = patient_intake::Options {
        url: server.address.clone(),
        patients: 20,
        crashes: 3,
        settle_within: SETTLE_WITHIN,
        verbose: true,
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime
        .block_on(async { tokio::time::timeout(RUN_WITHIN, patient_intake::run(&options)).await })
        .unwrap_or_else(|_| panic!("the run did not end within {RUN_WITHIN:?}\n{}", server.log_tail()))
        .unwrap_or_else(|e| panic!("the run could not be made: {e:#}\n{}", server.log_tail()));
    eprintln!("{}", report.render());
    assert!(report.passed(), "{}\nserver log:\n{}", report.render(), server.log_tail());

    let c = &report.counts;
    // The plan of 20: 13 routine, 3 unclear (to the front desk), 4 lapsed (aborted).
    assert_eq!((c.patients, c.done, c.aborted, c.in_inbox, c.lost), (20, 13, 4, 3, 0), "{c:?}");
    assert_eq!((c.rerouted, c.joins), (17, 17), "every case past triage rerouted and joined: {c:?}");
    assert!(report.refunds_possible, "the example's workflow lets an abort compensate billing");
    assert_eq!(c.children, 34 + 4, "notify children and one refund per aborted case: {c:?}");
    assert!(c.lease_expiries >= 1, "the crashed mailer's leases expired: {c:?}");
    assert!(c.late_answers >= 1, "the SMS gateway answered after a re-offer: {c:?}");
    assert_eq!(c.refunds, 4, "every aborted case refunded: {c:?}");
    server.stop();
}
