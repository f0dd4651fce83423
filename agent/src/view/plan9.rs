//! Plan 9 proc(3) files rendered from the table: `status`, `segment`, `proc`, `noteid`, and the
//! target of `text`. Layouts follow the manual and, where it leaves the bytes open, Plan 9's
//! `port/devproc.c` (`readstr`/`readnum` into fixed-width fields). `ctl`, `note`, `notepg`,
//! `mem` and `wait` are control files (`control/`); `docs/personalities/plan9.md` has the table
//! of what maps one-to-one and what differs.

use bpfproc_common::TaskRecord;

use super::{Host, ViewError, maps, process_state};
use crate::table::Process;

/// `KNAMELEN`: name and user fields are 28 bytes, 27 characters and a space.
const KNAMELEN: usize = 28;
/// `NUMSIZE`: numbers are right-justified in 11 characters and followed by a space.
const NUMSIZE: usize = 12;
/// The state field is 11 characters and a space.
const STATESIZE: usize = 12;

/// The Plan 9 state name (`statename[]` in port/proc.c) for a Linux state letter.
///
/// | Linux | Plan 9 | why |
/// |---|---|---|
/// | `R` running or runnable | `Running` | the record has no `on_cpu`, so runnable-but-waiting (`Ready`) cannot be told apart |
/// | `S` interruptible sleep | `Wakeme` | Plan 9's `sleep()` on a Rendez, which a note interrupts |
/// | `D` uninterruptible sleep | `Queueing` | Plan 9's only waits a note cannot break are the lock queues |
/// | `T` stopped by a signal | `Stopped` | |
/// | `t` stopped by a tracer | `Stopped` | what `stop`/`waitstop` produce; the debugger holds it |
/// | `Z` exited, not yet reaped | `Moribund` | exited and waiting to be freed |
/// | `X` dead | `Dead` | |
/// | `I` idle kernel thread, `P` parked | `Wakeme` | asleep until woken |
///
/// `Ready`, `Rendez`, `Broken`, `Scheding` and the syscall names Plan 9 puts in `psstate` have
/// no Linux source and are never produced.
pub fn state_name(letter: char) -> &'static str {
    match letter {
        'R' => "Running",
        'D' => "Queueing",
        'T' | 't' => "Stopped",
        'Z' => "Moribund",
        'X' => "Dead",
        // S, I, P.
        _ => "Wakeme",
    }
}

fn leader(p: &Process) -> Result<TaskRecord, ViewError> {
    p.leader().ok_or(ViewError::NoProcess)
}

/// `readstr` into a blank field: at most `width` bytes, the rest stays spaces.
fn put_str(out: &mut Vec<u8>, s: &[u8], width: usize, size: usize) {
    let s = &s[..s.len().min(width)];
    out.extend_from_slice(s);
    out.resize(out.len() + size - s.len(), b' ');
}

/// `readnum`: `%*lud` in `size - 1` columns, then a space.
fn put_num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(format!("{n:>w$} ", w = NUMSIZE - 1).as_bytes());
}

/// `/proc/n/status`: name and user (27 characters each, left-justified), state (11), then
/// user, system and real time and the children's user, system and real time in milliseconds,
/// then memory except stack in KiB; every field is followed by a space and there is no
/// newline, as devproc.c writes it.
///
/// `user` is the user name of the process's uid (the caller looks it up; the decimal uid when
/// there is none). `now_ns` is the boot clock now, for the real time. The children's real
/// time is 0: Linux keeps no such sum (see the personality's page).
pub fn status(p: &Process, user: &[u8], host: &Host, now_ns: u64) -> Result<Vec<u8>, ViewError> {
    let t = leader(p)?;
    let sum = p.totals(&t, true);
    let ms = |ns: u64| ns / 1_000_000;
    let mut out = Vec::with_capacity(2 * KNAMELEN + STATESIZE + 7 * NUMSIZE);
    put_str(&mut out, &p.comm, KNAMELEN - 1, KNAMELEN);
    put_str(&mut out, user, KNAMELEN - 1, KNAMELEN);
    put_str(
        &mut out,
        state_name(process_state(p)).as_bytes(),
        STATESIZE - 1,
        STATESIZE,
    );
    for n in [
        ms(sum.utime),
        ms(sum.stime),
        ms(now_ns.saturating_sub(p.start_boottime)),
        ms(t.cutime),
        ms(t.cstime),
        0,
    ] {
        put_num(&mut out, n);
    }
    // Plan 9 sums the virtual size of every segment but the stack.
    let pages = t.total_vm.saturating_sub(t.stack_vm);
    put_num(&mut out, (pages * host.page_size) >> 10);
    Ok(out)
}

/// A Plan 9 segment type (`sname[]` in devproc.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Text,
    Data,
    Bss,
    Stack,
    Shared,
    Phys,
}

impl Segment {
    fn name(self) -> &'static str {
        match self {
            Segment::Text => "Text",
            Segment::Data => "Data",
            Segment::Bss => "Bss",
            Segment::Stack => "Stack",
            Segment::Shared => "Shared",
            Segment::Phys => "Phys",
        }
    }

    /// Which Plan 9 segment a Linux mapping plays the part of:
    /// - `[stack]` → Stack;
    /// - a shared mapping (`s`) → Shared, as a `segattach` or RFMEM-shared segment;
    /// - the kernel's own pages (`[vdso]`, `[vvar]`, `[vsyscall]`, …) → Phys, memory the
    ///   process did not load;
    /// - a private file mapping: executable or read-only → Text (code and read-only data of
    ///   an image, which Plan 9 keeps in its read-only Text), writable → Data;
    /// - private anonymous memory (`[heap]`, the bss tail of an image, mmap'd memory) → Bss,
    ///   where Plan 9 grows everything brk and malloc hand out.
    fn of(r: &maps::Region) -> Segment {
        if r.path == b"[stack]" {
            Segment::Stack
        } else if r.shared {
            Segment::Shared
        } else if r.path.first() == Some(&b'[') && r.path != b"[heap]" {
            Segment::Phys
        } else if r.is_file() {
            if r.write {
                Segment::Data
            } else {
                Segment::Text
            }
        } else {
            Segment::Bss
        }
    }
}

/// `/proc/n/segment` from the process's `maps` (or `smaps`) text: one line per segment,
/// `%-6s %c%c %.8lux %.8lux %4ld` — type, `R` if read-only, a blank profiling flag, start,
/// end, reference count.
///
/// Adjacent mappings that play the same part for the same object are one segment (an ELF
/// image's headers, code and read-only data are one Text, as in Plan 9). The reference count is
/// the number of threads sharing the address space (`nr_threads`): Linux does not say how many
/// other processes map the same file, so a shared Text counts only this process's users.
pub fn segment(p: &Process, maps_text: &[u8]) -> Result<Vec<u8>, ViewError> {
    let t = leader(p)?;
    let regions = maps::parse(maps_text)?;
    let mut segs: Vec<(Segment, bool, u64, u64, &[u8])> = Vec::new();
    for r in &regions {
        let kind = Segment::of(r);
        let ronly = !r.write;
        // Only the same part of the same object continues a segment: an image's anonymous bss
        // right after its Data starts a Bss, as in Plan 9.
        match segs.last_mut() {
            Some((k, ro, _, end, path))
                if *k == kind && *ro == ronly && *end == r.start && *path == r.path.as_slice() =>
            {
                *end = r.end;
            }
            _ => segs.push((kind, ronly, r.start, r.end, &r.path)),
        }
    }
    let mut out = String::new();
    for (kind, ronly, start, end, _) in segs {
        out.push_str(&format!(
            "{:<6} {} {:08x} {:08x} {:4}\n",
            kind.name(),
            if ronly { 'R' } else { ' ' },
            start,
            end,
            t.nr_threads
        ));
    }
    Ok(out.into_bytes())
}

/// `/proc/n/proc`: "the kernel per-process structure". The agent's copy of it is the leader's
/// `TaskRecord` (`common/src/lib.rs`, `#[repr(C)]`, native byte order, size pinned by a test),
/// exactly as the BPF iterator wrote it.
pub fn proc_record(p: &Process) -> Result<Vec<u8>, ViewError> {
    let t = leader(p)?;
    // SAFETY: TaskRecord is repr(C) with only integer and byte-array fields and explicit
    // padding, so all of its bytes are initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&t as *const TaskRecord).cast::<u8>(),
            size_of::<TaskRecord>(),
        )
    };
    Ok(bytes.to_vec())
}

/// `/proc/n/noteid`: the note group, which is Linux's process group (where `notepg` posts).
/// devproc.c formats it with `readnum`: 11 columns and a space, no newline.
pub fn noteid(p: &Process) -> Result<Vec<u8>, ViewError> {
    let mut out = Vec::with_capacity(NUMSIZE);
    put_num(&mut out, u64::from(leader(p)?.pgid));
    Ok(out)
}

/// The target of `/proc/n/text`, "a pseudonym for the file from which the process was
/// executed": the executable's path. A kernel thread has none (ENOENT, as Linux's `exe`).
pub fn text_target(p: &Process) -> Result<Vec<u8>, ViewError> {
    p.exe_shown().map(Into::into).ok_or(ViewError::NoFile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{leader_mut, maps::tests::MAPS, test_process};

    const HOST: Host = Host {
        boot_epoch_ns: 0,
        clock_ticks: 100,
        page_size: 4096,
    };

    #[test]
    fn status_is_fixed_width_as_devproc_writes_it() {
        let mut p = test_process();
        let mut t = leader_mut(&mut p);
        // 1.5 s user, 0.25 s system, precise runtime equal to the ticks.
        t.utime = 1_500_000_000;
        t.stime = 250_000_000;
        t.sum_exec_runtime = 1_750_000_000;
        t.cutime = 7_000_000;
        t.cstime = 3_999_999;
        t.total_vm = 2048 + 33;
        t.stack_vm = 33;
        drop(t);
        // Five seconds after the process started.
        let got = status(&p, b"glenda", &HOST, p.start_boottime + 5_000_000_000).unwrap();
        let want = format!(
            "{:<27} {:<27} {:<11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} ",
            "sleep", "glenda", "Wakeme", 1500, 250, 5000, 7, 3, 0, 8192
        );
        assert_eq!(String::from_utf8(got.clone()).unwrap(), want);
        assert_eq!(got.len(), 2 * 28 + 12 + 7 * 12);
    }

    #[test]
    fn status_truncates_long_names_and_keeps_the_columns() {
        let mut p = test_process();
        p.comm = b"a-very-long-process-name-that-overflows".to_vec();
        let got = status(&p, b"a-user-name-longer-than-twenty-seven", &HOST, 0).unwrap();
        assert_eq!(&got[..28], b"a-very-long-process-name-th ");
        assert_eq!(&got[28..56], b"a-user-name-longer-than-twe ");
        assert_eq!(got.len(), 152);
    }

    #[test]
    fn linux_states_have_plan9_names() {
        let cases = [
            ('R', "Running"),
            ('S', "Wakeme"),
            ('D', "Queueing"),
            ('T', "Stopped"),
            ('t', "Stopped"),
            ('Z', "Moribund"),
            ('X', "Dead"),
            ('I', "Wakeme"),
            ('P', "Wakeme"),
        ];
        for (letter, name) in cases {
            assert_eq!(state_name(letter), name, "{letter}");
            assert!(name.len() <= 11);
        }
        let mut p = test_process();
        leader_mut(&mut p).state = 0x104; // __TASK_STOPPED | TASK_WAKEKILL
        let s = status(&p, b"u", &HOST, 0).unwrap();
        assert_eq!(&s[56..68], b"Stopped     ");
    }

    #[test]
    fn segments_merge_an_image_and_name_each_part() {
        let mut p = test_process();
        leader_mut(&mut p).nr_threads = 3;
        let got = String::from_utf8(segment(&p, MAPS.as_bytes()).unwrap()).unwrap();
        let want = "\
Text   R 55d0c0a00000 55d0c0a07000    3
Data     55d0c0a09000 55d0c0a0a000    3
Bss      55d0c0a0a000 55d0c0a0b000    3
Bss      55d0c1b3e000 55d0c1b5f000    3
Shared   7f0a1c000000 7f0a1c021000    3
Text   R 7f0a1c200000 7f0a1c228000    3
Stack    7ffd4a5e0000 7ffd4a601000    3
Phys   R 7ffd4a7e8000 7ffd4a7ea000    3
";
        assert_eq!(got, want);
    }

    #[test]
    fn segment_addresses_pad_to_eight_digits() {
        let p = test_process();
        let got = segment(
            &p,
            b"00400000-00452000 r-xp 00000000 08:02 173521 /bin/rc\n",
        )
        .unwrap();
        assert_eq!(got, b"Text   R 00400000 00452000    1\n");
    }

    #[test]
    fn segment_of_bad_maps_is_an_error() {
        let p = test_process();
        assert_eq!(segment(&p, b"nonsense\n").unwrap_err().errno(), libc::EIO);
    }

    #[test]
    fn proc_is_the_leader_record() {
        let p = test_process();
        let bytes = proc_record(&p).unwrap();
        assert_eq!(bytes.len(), size_of::<TaskRecord>());
        assert_eq!(&bytes[..4], &4242u32.to_ne_bytes(), "tid first");
        let mut no_tasks = test_process();
        no_tasks.tasks = crate::table::Tasks::default();
        assert_eq!(proc_record(&no_tasks).unwrap_err().errno(), libc::ENOENT);
    }

    #[test]
    fn noteid_is_the_process_group_as_readnum_writes_it() {
        let mut p = test_process();
        leader_mut(&mut p).pgid = 77;
        assert_eq!(noteid(&p).unwrap(), b"         77 ");
    }

    #[test]
    fn text_is_the_executable_or_enoent() {
        let mut p = test_process();
        assert_eq!(text_target(&p).unwrap(), b"/usr/bin/sleep");
        p.exe = None;
        assert_eq!(text_target(&p).unwrap_err().errno(), libc::ENOENT);
    }
}
