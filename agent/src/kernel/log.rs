//! What the BPF programs say on their failure paths (aya-log), forwarded into `tracing` under
//! the target `bpfproc::ebpf`, with the program's module as a field.
//!
//! Off unless that target's DEBUG is enabled when the programs load (`RUST_LOG=bpfproc::ebpf=debug`):
//! the level goes into the object's `AYA_LOG_LEVEL`, read-only data the verifier sees frozen, so
//! with it off every log statement is a branch never taken that the verifier drops, and no
//! forwarder runs. The programs log at debug only, and only where they also count a failure
//! (`stat::*`), so the counters stay the measure and the log says which process and why.

use aya::Ebpf;
use aya_log::{EbpfLogger, Level};
use tokio::{io::unix::AsyncFd, sync::watch};

/// The BPF side's `AYA_LOG_LEVEL`: 0 (off) unless this target's DEBUG is on.
pub(super) fn level() -> u8 {
    if tracing::enabled!(target: "bpfproc::ebpf", tracing::Level::TRACE) {
        Level::Trace as u8
    } else if tracing::enabled!(target: "bpfproc::ebpf", tracing::Level::DEBUG) {
        Level::Debug as u8
    } else {
        0
    }
}

/// The reader of the programs' log records, when their level is on.
pub struct Logger(EbpfLogger<Forward>);

impl Logger {
    /// `None` with the level off, or when the object has no log map (no log statement
    /// survived compilation): neither is a reason not to start.
    pub(super) fn take(ebpf: &mut Ebpf, level: u8) -> Option<Logger> {
        if level == 0 {
            return None;
        }
        match EbpfLogger::init_with_logger(ebpf, Forward) {
            Ok(l) => Some(Logger(l)),
            Err(e) => {
                tracing::debug!(target: "bpfproc::ebpf", "no BPF log to forward: {e}");
                None
            }
        }
    }
}

/// Forwards records as they come until `shutdown`.
pub async fn forward(logger: Logger, shutdown: watch::Receiver<bool>) {
    if let Err(e) = read(logger, shutdown).await {
        tracing::warn!(target: "bpfproc::ebpf", "forwarding the BPF programs' log: {e}");
    }
}

async fn read(logger: Logger, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    // SAFETY: the logger owns its ring buffer's map fd and keeps it open, unchanged, for as
    // long as the AsyncFd owns the logger.
    let mut fd =
        unsafe { AsyncFd::register_with_interest(logger.0, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
    tracing::debug!(target: "bpfproc::ebpf", "forwarding the BPF programs' log");
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// aya-log speaks the `log` crate's API: each record becomes a `tracing` event.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        // The record's target is the BPF program's module (`bpfproc::exec`).
        let program = r.target();
        let msg = r.args();
        match r.level() {
            log::Level::Error => tracing::error!(target: "bpfproc::ebpf", program, "{msg}"),
            log::Level::Warn => tracing::warn!(target: "bpfproc::ebpf", program, "{msg}"),
            log::Level::Info => tracing::info!(target: "bpfproc::ebpf", program, "{msg}"),
            log::Level::Debug => tracing::debug!(target: "bpfproc::ebpf", program, "{msg}"),
            log::Level::Trace => tracing::trace!(target: "bpfproc::ebpf", program, "{msg}"),
        }
    }

    fn flush(&self) {}
}
