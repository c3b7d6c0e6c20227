//! A small disk for disk-full tests: a tmpfs of a given size mounted on a
//! fresh directory for one test and unmounted when dropped, also when the
//! test fails. Mounting needs root (CI runs as root); without it the test
//! fails and says so, it does not skip.

use std::path::Path;
use std::process::Command;

/// A mounted tmpfs, unmounted (lazily) on drop.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=`: `8m`, `24m`).
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a {size} tmpfs failed: this test needs root (as in CI)");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Total and available bytes (statfs, through `stat -f`).
    pub fn usage(&self) -> (u64, u64) {
        let out =
            Command::new("stat").args(["-f", "-c", "%b %a %S"]).arg(self.path()).output().expect("stat -f");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let n: Vec<u64> = text.split_whitespace().map(|n| n.parse().expect("a number")).collect();
        assert_eq!(n.len(), 3, "stat -f printed blocks, available blocks and block size: {text}");
        (n[0] * n[2], n[1] * n[2])
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
