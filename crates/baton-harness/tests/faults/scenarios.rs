//! The fault scenarios' PR tier (docs/reliability.md): each runs real
//! clients over HTTP against a child `baton dev` (`baton serve` on
//! PostgreSQL for `clock-jump-pg`) for a few cycles of its
//! fault, then both checkers. A test passes only if the scenario's evidence
//! shows the fault took effect and the checkers found nothing; the
//! lying-fsync control passes only if the checker found losses. The long
//! tier is `baton-harness fault all` (not run here).

use super::bench_http::baton_binary;
use baton_harness::fault::scenarios::{self, ClockJump, ClockJumpPg, Disk, FsyncEio, Kill9, PowerLoss};
use baton_harness::fault::{self, FaultConfig, FaultReport, Scenario};

fn seed() -> u64 {
    std::env::var("BATON_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 >> 1)
    })
}

fn run(scenario: &mut dyn Scenario, tune: impl FnOnce(&mut FaultConfig)) -> FaultReport {
    let dir = tempfile::tempdir().expect("temp dir");
    let seed = seed();
    let mut config = FaultConfig::small(&baton_binary(), dir.path(), seed);
    tune(&mut config);
    let report = fault::run(scenario, &config)
        .unwrap_or_else(|e| panic!("{} (seed {seed}, BATON_FAULT_SEED repeats it): {e:#}", scenario.name()));
    let json = serde_json::to_string_pretty(&report).expect("report as JSON");
    eprintln!("{json}");
    assert!(scenarios::as_expected(&report), "{} not as expected (seed {seed}):\n{json}", report.scenario);
    report
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let report = run(&mut Kill9::default(), |_| {});
    assert!(report.ok > 0 && report.tasks > 0);
}

#[test]
fn power_loss_loses_nothing_acknowledged_and_a_lying_fsync_is_caught() {
    let report = run(&mut PowerLoss::new(false), |_| {});
    assert_eq!(report.lost, 0);
    // The control: the same run on a disk whose fsync lies must lose acknowledged work.
    let control = run(&mut PowerLoss::new(true), |c| c.cycles = 2);
    assert!(control.lost > 0, "the checker missed the losses of a lying fsync");
}

#[test]
fn a_failed_fsync_stops_the_server_and_acknowledges_nothing() {
    run(&mut FsyncEio::new(20), |c| c.cycles = 2);
    // The lazy filesystem's EIO also keeps the failed batch unsynced, so the
    // power cut after each stop drops it: an acknowledgement of it is lost.
    run(&mut PowerLoss::on(Disk::FailingSync(20)), |c| c.cycles = 2);
}

#[test]
fn clock_jumps_expire_leases_early_and_the_epoch_fences_them() {
    let report = run(&mut ClockJump::default(), |c| c.run_ms = (1_200, 1_600));
    assert_eq!(report.stale_accepted, 0);
}

#[test]
fn clock_jumps_leave_postgres_leases_alone() {
    let mut scenario = ClockJumpPg::from_env().expect("a runtime");
    let report = run(&mut scenario, |c| c.run_ms = (1_200, 1_600));
    assert_eq!((report.stale_accepted, fault::evidence_u64(&report, "lease_expiries")), (0, 0));
}
