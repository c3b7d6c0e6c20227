//! Readings from Linux's `/proc` and `/sys` that make benchmark figures
//! comparable across systems: device flushes (who really fsyncs, and how
//! often), this process's CPU time, and CPU time used by everything else on
//! the machine during a run (the noise gate of docs/glossary.md).
//! Nothing here needs privileges or `unsafe`.

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Linux reports process CPU time in clock ticks of `USER_HZ`, which is 100 on
/// every architecture Linux supports today (it is part of the user ABI, unlike
/// the kernel's internal HZ). Reading it via `sysconf` would need `libc`.
const USER_HZ: f64 = 100.0;

/// The whole disk that holds a path, as seen by `/sys/block/<disk>/stat`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockDevice {
    /// The disk's kernel name, such as `vda` or `nvme0n1`.
    pub name: String,
    #[serde(skip)]
    stat: PathBuf,
}

impl BlockDevice {
    /// Finds the disk holding `path`: `st_dev` gives major:minor, and
    /// `/sys/dev/block/MAJ:MIN` links to the device; a partition's parent
    /// directory is its disk, whose counters include the partition's flushes.
    pub fn holding(path: &Path) -> Result<Self> {
        let dev = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.dev();
        let (major, minor) = split_dev(dev);
        if major == 0 {
            bail!("{} is on a virtual filesystem (device 0:{minor}); it has no block device", path.display());
        }
        let link = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let mut dir = fs::canonicalize(&link).with_context(|| format!("resolve {}", link.display()))?;
        if dir.join("partition").exists() {
            dir = dir.parent().context("a partition has a parent disk")?.to_path_buf();
        }
        let name = dir.file_name().context("device directory has a name")?.to_string_lossy().into_owned();
        let device = Self { name, stat: dir.join("stat") };
        device.flushes()?;
        Ok(device)
    }

    /// Field 16 of the stat file: flush requests completed since boot
    /// (Documentation/block/stat.rst). Kernels before 5.5 lack it.
    pub fn flushes(&self) -> Result<u64> {
        let text = fs::read_to_string(&self.stat).with_context(|| format!("read {}", self.stat.display()))?;
        let field = text.split_whitespace().nth(15).with_context(|| {
            format!("{} has no flush counter (field 16); the kernel is older than 5.5", self.stat.display())
        })?;
        Ok(field.parse()?)
    }
}

/// Linux's `dev_t` layout: 12 bits of major and 20 of minor, split across the word.
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// User plus system CPU seconds used by this process, all threads, so far.
pub fn process_cpu_seconds() -> Result<f64> {
    stat_cpu_seconds(&fs::read_to_string("/proc/self/stat")?)
}

/// CPU seconds used so far by this process's live threads whose name starts
/// with `prefix` (names are cut to 15 bytes by the kernel). Shows whether a
/// single writer thread is the bottleneck: near 1 s per second is a full core.
pub fn threads_cpu_seconds(prefix: &str) -> Result<f64> {
    let mut total = 0.0;
    for entry in fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        // A thread may exit between listing and reading: skip it.
        let (Ok(comm), Ok(stat)) =
            (fs::read_to_string(dir.join("comm")), fs::read_to_string(dir.join("stat")))
        else {
            continue;
        };
        if comm.trim_end().starts_with(prefix) {
            total += stat_cpu_seconds(&stat)?;
        }
    }
    Ok(total)
}

/// utime + stime of a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> Result<f64> {
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = stat.rsplit_once(')').context("a stat line has a command name")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) as f64 / USER_HZ)
}

/// Bytes this process has passed to write system calls so far (`wchar` of
/// `/proc/self/io`). SQLite writes its WAL with `pwrite`, so the difference
/// over a run is the WAL (and checkpoint) volume: how much each handoff costs
/// the disk, before the fsync.
pub fn process_written_bytes() -> Result<u64> {
    let text = fs::read_to_string("/proc/self/io")?;
    let line = text.lines().find_map(|l| l.strip_prefix("wchar:")).context("/proc/self/io has wchar")?;
    Ok(line.trim().parse()?)
}

/// Busy CPU seconds of the whole machine (all CPUs) so far, from `/proc/stat`.
pub fn machine_busy_seconds() -> Result<f64> {
    let text = fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("/proc/stat is empty")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let busy: u64 =
        ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Ok(busy as f64 / USER_HZ)
}

/// Waits until the rest of the machine is quiet: other processes together
/// using less than `foreign_cores_max` cores over a one-second window, or
/// until `wait_max` has passed. Returns how long it waited and the last
/// window's foreign load (in cores). On a shared 2-core machine a compiler
/// running beside a benchmark cuts fsync rates several-fold
/// (measured here: a foreign build cut them tenfold), so runs start only when it is quiet, and
/// `Usage::foreign_cpu_seconds` tells which runs were disturbed anyway.
pub fn wait_for_quiet(foreign_cores_max: f64, wait_max: Duration) -> Result<(Duration, f64)> {
    const WINDOW: Duration = Duration::from_secs(1);
    let start = Instant::now();
    loop {
        let (busy, own) = (machine_busy_seconds()?, process_cpu_seconds()?);
        std::thread::sleep(WINDOW);
        let foreign = ((machine_busy_seconds()? - busy) - (process_cpu_seconds()? - own)).max(0.0);
        let cores = foreign / WINDOW.as_secs_f64();
        if cores < foreign_cores_max || start.elapsed() >= wait_max {
            return Ok((start.elapsed(), cores));
        }
    }
}

/// CPU seconds used so far by process `pid` (all its threads), or `None`
/// when it is gone or unreadable.
///
/// From `/proc/PID/task/*/schedstat` (nanoseconds on the CPU, per thread)
/// where it can: `stat` counts whole clock ticks per process, so many
/// short-working processes (a PostgreSQL backend per client, a few ms each)
/// would each round down to nothing. `/proc/PID/schedstat` alone is the main
/// thread only, which misses a multi-threaded server's work.
pub fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    const THREADS_MAX: usize = 10_000;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        let mut ns: u64 = 0;
        let mut any = false;
        for t in tasks.flatten().take(THREADS_MAX) {
            if let Some(v) = fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|x| x.split_whitespace().next()?.parse::<u64>().ok())
            {
                ns += v;
                any = true;
            }
        }
        if any {
            return Some(ns as f64 / 1e9);
        }
    }
    stat_cpu_seconds(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).ok()
}

/// Processes whose command name (`/proc/PID/comm`) is exactly `name`, such as
/// `postgres` (every backend of a cluster) or `beam.smp` (RabbitMQ).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name))
        .collect()
}

/// Resident set size of a process in KiB (`VmRSS` of `/proc/PID/status`;
/// `None` for this process), or `None` when unreadable.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or_else(|| "/proc/self/status".to_owned(), |p| format!("/proc/{p}/status"));
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// Bytes allocated on disk to the files under `dir` (blocks, so sparse and
/// preallocated files count as the disk sees them). Bounded by `DISK_FILES_MAX`.
pub fn disk_bytes(dir: &Path) -> u64 {
    const DISK_FILES_MAX: usize = 100_000;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > DISK_FILES_MAX {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// Other processes' CPU the benchmark owns (servers it started or drives):
/// their CPU is the system under test's, not noise.
pub struct Watch {
    /// Processes are found again by this command name at `stop`, so ones
    /// started during the run (a new connection's backend) count too.
    name: Option<String>,
    before: std::collections::HashMap<u32, f64>,
}

impl Watch {
    /// Watches these processes only.
    pub fn start(pids: Vec<u32>) -> Self {
        let before = pids.into_iter().filter_map(|p| Some((p, pid_cpu_seconds(p)?))).collect();
        Self { name: None, before }
    }

    /// Watches every process named `name`, now and started before `stop`.
    pub fn named(name: &str) -> Self {
        Self { name: Some(name.to_owned()), ..Self::start(pids_named(name)) }
    }

    /// CPU seconds the watched processes used since `start` (a process that
    /// exited meanwhile loses its share; one started meanwhile counts whole),
    /// and their summed RSS in KiB now.
    pub fn stop(&self) -> (f64, Option<u64>) {
        let mut pids: Vec<u32> = self.before.keys().copied().collect();
        if let Some(name) = &self.name {
            pids.extend(pids_named(name).into_iter().filter(|p| !self.before.contains_key(p)));
        }
        let mut cpu = 0.0;
        let mut rss = 0;
        for p in pids {
            if let Some(now) = pid_cpu_seconds(p) {
                cpu += (now - self.before.get(&p).copied().unwrap_or(0.0)).max(0.0);
                rss += rss_kib(Some(p)).unwrap_or(0);
            }
        }
        (cpu, (rss > 0).then_some(rss))
    }
}

/// What a measured interval cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub seconds: f64,
    /// Device flushes completed during the interval; `None` without a block device.
    pub flushes: Option<u64>,
    /// This process (agents and the system under test, which runs in-process).
    pub cpu_seconds: f64,
    /// Everything else on the machine: a high figure means the run was disturbed.
    pub foreign_cpu_seconds: f64,
    /// CPU of the system's writer thread, when it has one (see `Probe::start`).
    pub writer_cpu_seconds: Option<f64>,
    /// Bytes this process wrote (write system calls) during the interval.
    pub written_bytes: u64,
}

/// Takes readings at the start of an interval and reports the difference.
pub struct Probe {
    device: Option<BlockDevice>,
}

/// Readings at the start of an interval.
pub struct Mark {
    at: Instant,
    flushes: Option<u64>,
    cpu: f64,
    busy: f64,
    writer: Option<(&'static str, f64)>,
    written: u64,
}

impl Probe {
    pub fn new(device: Option<BlockDevice>) -> Self {
        Self { device }
    }

    pub fn device(&self) -> Option<&BlockDevice> {
        self.device.as_ref()
    }

    /// Starts an interval. `writer` names the system's writer thread (a
    /// prefix of its name), whose CPU is then reported separately; it must be
    /// alive when `stop` is called, or its time is lost.
    pub fn start(&self, writer: Option<&'static str>) -> Result<Mark> {
        Ok(Mark {
            writer: writer.map(|w| threads_cpu_seconds(w).map(|cpu| (w, cpu))).transpose()?,
            written: process_written_bytes()?,
            flushes: self.device.as_ref().map(BlockDevice::flushes).transpose()?,
            cpu: process_cpu_seconds()?,
            busy: machine_busy_seconds()?,
            at: Instant::now(),
        })
    }

    /// The usage from `mark` until now. `end` is when the work really ended
    /// (the last handoff), which may be a little before the readings are taken.
    pub fn stop(&self, mark: &Mark, end: Instant) -> Result<Usage> {
        let cpu = process_cpu_seconds()? - mark.cpu;
        let busy = machine_busy_seconds()? - mark.busy;
        let flushes = match (&self.device, mark.flushes) {
            (Some(d), Some(before)) => Some(d.flushes()? - before),
            _ => None,
        };
        let writer_cpu_seconds =
            mark.writer.map(|(w, before)| threads_cpu_seconds(w).map(|now| now - before)).transpose()?;
        Ok(Usage {
            writer_cpu_seconds,
            written_bytes: process_written_bytes()? - mark.written,
            seconds: end.saturating_duration_since(mark.at).as_secs_f64(),
            flushes,
            cpu_seconds: cpu,
            foreign_cpu_seconds: (busy - cpu).max(0.0),
        })
    }
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_kib: u64,
    pub device: Option<String>,
    pub sqlite: String,
}

impl Machine {
    pub fn describe(device: Option<&BlockDevice>) -> Self {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        Self {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model,
            memory_kib,
            device: device.map(|d| d.name.clone()),
            sqlite: rusqlite::version().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_split_like_the_kernel() {
        // 254:0 is 0xfe00; 259:1 (nvme partition) is 0x10301.
        for (dev, want) in [(0xfe00, (254, 0)), (0x10301, (259, 1)), (0x0801, (8, 1))] {
            assert_eq!(split_dev(dev), want, "dev {dev:#x}");
        }
    }

    #[test]
    fn readings_are_available_here() {
        assert!(process_cpu_seconds().expect("proc stat") >= 0.0);
        assert!(threads_cpu_seconds("").expect("task stats") >= 0.0);
        process_written_bytes().expect("proc io");
        assert!(machine_busy_seconds().expect("proc stat") > 0.0);
    }
}
