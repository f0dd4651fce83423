//! What no FUSE server can beat here: the FUSE floor (a server that only forwards to /proc,
//! over /dev/fuse or io_uring) and a bare round trip between two processes.

use std::{
    fmt::Write as _,
    io::Read as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::common::{Series, table};

/// FUSE over io_uring is off unless the fuse module's `enable_uring` says otherwise: on for
/// the benchmark's floor, then back as it was.
pub(super) struct UringSwitch(bool);

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

impl UringSwitch {
    pub(super) fn on() -> anyhow::Result<Self> {
        let was = std::fs::read_to_string(ENABLE_URING)
            .context("this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING)")?;
        let was = was.trim() == "Y";
        std::fs::write(ENABLE_URING, "1")?;
        Ok(Self(was))
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        if !self.0 {
            let _ = std::fs::write(ENABLE_URING, "0");
        }
    }
}

/// A running `cargo xtask fuse-floor` (floor.rs).
pub(super) struct Floor {
    pub(super) dir: std::path::PathBuf,
    child: Child,
    uring: bool,
}

impl Floor {
    pub(super) fn start(dir: &std::path::Path, uring: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("fuse-floor").arg(dir);
        if uring {
            cmd.arg("--uring");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the FUSE floor")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        }
        let floor = Self {
            dir: dir.to_owned(),
            child,
            uring,
        };
        if line.trim() != "ready" {
            bail!("the FUSE floor did not start: {}", floor.stop());
        }
        Ok(floor)
    }

    /// Unmounts it; returns its account of which transport carried the requests.
    pub(super) fn stop(mut self) -> String {
        self.unmount();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = self.child.wait();
        format!(
            "FUSE floor{}: {}",
            if self.uring { " (io_uring)" } else { "" },
            err.trim()
        )
    }

    fn unmount(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.unmount();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The least a FUSE round trip can cost here: one byte there and back through two pipes
/// between two processes, which is the shape of a request the agent answers (the caller
/// sleeps, the server wakes, answers, and wakes the caller). Once with both on one CPU, once
/// left to the scheduler, as `ps` is.
pub(super) fn round_trip_floor(rounds: usize, report: &mut String) -> anyhow::Result<(f64, f64)> {
    const TRIPS: usize = 20_000;
    let mut pinned = Series {
        name: format!("{TRIPS} pipe round trips, both processes on CPU 0"),
        samples: vec![],
    };
    let mut free = Series {
        name: format!("{TRIPS} pipe round trips, placed by the scheduler"),
        samples: vec![],
    };
    for _ in 0..rounds {
        pinned.samples.push(ping_pong(TRIPS, true)?);
        free.samples.push(ping_pong(TRIPS, false)?);
    }
    let us = |s: &Series| s.median().as_secs_f64() * 1e6 / TRIPS as f64;
    let (one, any) = (us(&pinned), us(&free));
    println!("round trip between processes: {one:.1} us on one CPU, {any:.1} us placed freely");
    table(
        &format!(
            "The floor under every FUSE round trip: a process-to-process round trip takes {one:.1} µs on one CPU, {any:.1} µs placed by the scheduler"
        ),
        &[pinned, free],
        report,
    );
    let _ = writeln!(
        report,
        "\nA never-stale view answers each of `ps`'s stat, open, read and close of a process's files with one such round trip or more; the requests-per-`ps` count above times these times is the least such a view can add to `ps`, however little the server does. The FUSE floor rows measure the same with a server that does nothing but forward to /proc."
    );
    Ok((one, any))
}

/// `trips` one-byte round trips between this process and a forked child, through two pipes.
fn ping_pong(trips: usize, one_cpu: bool) -> anyhow::Result<Duration> {
    let mut fds = [0i32; 4];
    // SAFETY: each pipe() writes two descriptors into its half of the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0
        || unsafe { libc::pipe(fds[2..].as_mut_ptr()) } != 0
    {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let [to_child, from_parent, to_parent, from_child] = [fds[1], fds[0], fds[3], fds[2]];
    // The child inherits the mask.
    let _pinned = one_cpu.then(OnCpu0::new);
    // SAFETY: the child only reads, writes and exits: async-signal-safe calls.
    let child = unsafe { libc::fork() };
    if child < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closes this function's descriptors.
        unsafe {
            for fd in fds {
                libc::close(fd);
            }
        }
        bail!("fork: {e}");
    }
    if child == 0 {
        let mut b = 0u8;
        for _ in 0..trips {
            // SAFETY: one byte into and out of a valid buffer.
            unsafe {
                if libc::read(from_parent, (&raw mut b).cast(), 1) != 1 {
                    libc::_exit(1);
                }
                libc::write(to_parent, (&raw const b).cast(), 1);
            }
        }
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let start = Instant::now();
    let mut b = 0u8;
    for _ in 0..trips {
        // SAFETY: as in the child.
        unsafe {
            libc::write(to_child, (&raw const b).cast(), 1);
            libc::read(from_child, (&raw mut b).cast(), 1);
        }
    }
    let took = start.elapsed();
    // SAFETY: reaps the child and closes this function's descriptors.
    unsafe {
        libc::waitpid(child, std::ptr::null_mut(), 0);
        for fd in fds {
            libc::close(fd);
        }
    }
    Ok(took)
}

/// Keeps the calling thread on CPU 0 while it lives, then restores its mask.
pub(super) struct OnCpu0(libc::cpu_set_t);

impl OnCpu0 {
    pub(super) fn new() -> Self {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: a zeroed cpu_set_t is a valid (empty) set; both calls read or write one.
        unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, size, &mut before);
            let mut cpu0: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut cpu0);
            libc::sched_setaffinity(0, size, &cpu0);
            OnCpu0(before)
        }
    }
}

impl Drop for OnCpu0 {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in new().
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}
