//! The show functions: one per file a personality renders from the table, as fs/proc/base.c
//! has one per `pid_entry` (`proc_pid_stat`, `proc_pid_status`, …). Each takes the process,
//! and the thread for a thread's file, and renders it with the pure renderers of `view`; a
//! file the table has no data for is a row served from the kernel's own file instead
//! (`tree::Bytes::Kernel`), with no function here.

use std::io::Read as _;

use super::kernel_files::{kernel_file, same_process};
use crate::{
    table::Process,
    view::{self, Host, ViewError, linux},
};

pub type Rendered = Result<Vec<u8>, ViewError>;

/// What a show function may use besides the process.
pub struct Ctx<'a> {
    pub host: &'a Host,
}

/// A show function: the process, and the thread for a file under `task/TID/`.
pub type Renderer = fn(&Ctx, &Process, Option<u32>) -> Rendered;

pub fn stat(c: &Ctx, p: &Process, tid: Option<u32>) -> Rendered {
    match tid {
        None => linux::stat(p, c.host),
        Some(t) => linux::task_stat(p, t, c.host),
    }
}

pub fn status(c: &Ctx, p: &Process, tid: Option<u32>) -> Rendered {
    match tid {
        None => linux::status(p, c.host),
        Some(t) => linux::task_status(p, c.host, t),
    }
}

pub fn statm(c: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    linux::statm(p, c.host)
}

pub fn cmdline(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    linux::cmdline(p)
}

pub fn comm(_: &Ctx, p: &Process, tid: Option<u32>) -> Rendered {
    match tid {
        None => linux::comm(p),
        Some(t) => linux::task_comm(p, t),
    }
}

pub fn limits(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    linux::limits(p)
}

pub fn maps(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    linux::maps(p)
}

pub fn plan9_status(c: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::plan9::status(
        p,
        crate::sys::users::name_or_number(p.uid).as_bytes(),
        c.host,
        crate::sys::clock::boot_ns(),
    )
}

pub fn plan9_segment(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::plan9::segment(p, &kernel_file(p, "maps")?)
}

pub fn plan9_proc(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::plan9::proc_record(p)
}

pub fn qnx_exefile(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::qnx::exefile(p)
}

pub fn bsd_cmdline(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::netbsd::cmdline(p)
}

pub fn freebsd_status(c: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::freebsd::status(p, c.host, &wchan(p)?)
}

pub fn netbsd_status(c: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::netbsd::status(p, c.host, &wchan(p)?)
}

pub fn freebsd_map(c: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::freebsd::map(&kernel_file(p, "smaps")?, c.host)
}

pub fn netbsd_map(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::netbsd::map(&kernel_file(p, "smaps")?)
}

pub fn freebsd_rlimit(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    view::freebsd::rlimit(p)
}

pub fn freebsd_etype(_: &Ctx, p: &Process, _: Option<u32>) -> Rendered {
    let head = elf_ident(p.pid);
    same_process(p)?;
    view::freebsd::etype(p, head.as_deref())
}

/// The kernel's wait channel; a zombie has none to read, which is what `exiting` says anyway.
fn wchan(p: &Process) -> Result<Vec<u8>, ViewError> {
    match kernel_file(p, "wchan") {
        Err(ViewError::Io(_)) if p.exit.is_some() => Ok(Vec::new()),
        r => r,
    }
}

/// The first bytes of the executable (its ELF ident), `None` if it cannot be read.
fn elf_ident(pid: u32) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(format!("/proc/{pid}/exe"))
        .ok()?
        .take(16)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}
