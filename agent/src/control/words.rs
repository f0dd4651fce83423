//! The control language: ctl commands, signal names and Plan 9 notes, parsed from the bytes a
//! caller wrote. Pure (std, libc's signal numbers, thiserror); the fuzz targets in `fuzz/`
//! call `fuzz_check` through the library.

/// A write that is not a command, signal or note; the control layer answers it with EINVAL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadWord(pub String);

/// A ctl command (one per write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    // Plan 9 proc(3).
    /// Suspend the process (SIGSTOP, or PTRACE_INTERRUPT for a tracee) and wait until stopped.
    Stop,
    /// Resume a stopped process; EBUSY if it is not stopped.
    Start,
    /// Block until the target is stopped or has exited; the target is not touched.
    WaitStop,
    /// `start`, then `waitstop`.
    StartStop,
    /// Set the stop-on-exec bit (inherited across fork).
    Hang,
    /// Clear it.
    NoHang,
    /// SIGKILL.
    Kill,
    // FreeBSD procfs(5).
    /// Trace the process (PTRACE_SEIZE) and stop it; the agent is its debugger until `detach`.
    Attach,
    /// Stop tracing and let the process continue.
    Detach,
    /// Continue a stopped tracee until a signal arrives, it hits a breakpoint, or exits.
    Run,
    /// Single-step a stopped tracee (no signal delivered) and wait for the step to finish.
    Step,
    /// Wait until the target is stopped, ready for debugging (same as `waitstop`).
    Wait,
    /// Deliver this signal (a lower-case name without `SIG`).
    Signal(i32),
}

impl Command {
    /// Parses one ctl write. A single trailing newline is allowed (what `echo` writes);
    /// anything else that is not exactly a command is EINVAL.
    pub fn parse(raw: &[u8]) -> Result<Command, BadWord> {
        let text = raw.strip_suffix(b"\n").unwrap_or(raw);
        let text =
            std::str::from_utf8(text).map_err(|_| BadWord("ctl command is not UTF-8".into()))?;
        Ok(match text {
            "stop" => Command::Stop,
            "start" => Command::Start,
            "waitstop" => Command::WaitStop,
            "startstop" => Command::StartStop,
            "hang" => Command::Hang,
            "nohang" => Command::NoHang,
            "kill" => Command::Kill,
            "attach" => Command::Attach,
            "detach" => Command::Detach,
            "run" => Command::Run,
            "step" => Command::Step,
            "wait" => Command::Wait,
            other => match signal_by_name(other) {
                Some(sig) => Command::Signal(sig),
                None => {
                    return Err(BadWord(format!(
                        "unknown ctl command {other:?} (known: stop start waitstop startstop \
                         hang nohang kill attach detach run step wait, or a signal name such \
                         as term, int, usr1)"
                    )));
                }
            },
        })
    }
}

/// The one table of signal names (x86-64 numbering): lower case without `SIG`, as FreeBSD's
/// ctl takes them; the first name of a number is its own, aliases (`iot`, `poll`) follow.
pub const SIGNALS: &[(&str, i32)] = &[
    ("hup", libc::SIGHUP),
    ("int", libc::SIGINT),
    ("quit", libc::SIGQUIT),
    ("ill", libc::SIGILL),
    ("trap", libc::SIGTRAP),
    ("abrt", libc::SIGABRT),
    ("iot", libc::SIGIOT),
    ("bus", libc::SIGBUS),
    ("fpe", libc::SIGFPE),
    ("kill", libc::SIGKILL),
    ("usr1", libc::SIGUSR1),
    ("segv", libc::SIGSEGV),
    ("usr2", libc::SIGUSR2),
    ("pipe", libc::SIGPIPE),
    ("alrm", libc::SIGALRM),
    ("term", libc::SIGTERM),
    ("stkflt", libc::SIGSTKFLT),
    ("chld", libc::SIGCHLD),
    ("cont", libc::SIGCONT),
    ("stop", libc::SIGSTOP),
    ("tstp", libc::SIGTSTP),
    ("ttin", libc::SIGTTIN),
    ("ttou", libc::SIGTTOU),
    ("urg", libc::SIGURG),
    ("xcpu", libc::SIGXCPU),
    ("xfsz", libc::SIGXFSZ),
    ("vtalrm", libc::SIGVTALRM),
    ("prof", libc::SIGPROF),
    ("winch", libc::SIGWINCH),
    ("io", libc::SIGIO),
    ("poll", libc::SIGPOLL),
    ("pwr", libc::SIGPWR),
    ("sys", libc::SIGSYS),
];

/// A ctl word's signal. `stop` and `kill` are not signals here: as ctl words they are Plan 9's
/// commands (which send SIGSTOP and SIGKILL anyway).
pub fn signal_by_name(name: &str) -> Option<i32> {
    if matches!(name, "stop" | "kill") {
        return None;
    }
    SIGNALS.iter().find(|(n, _)| *n == name).map(|&(_, s)| s)
}

/// A signal's short name (`kill` for 9), `None` for a number without one.
pub fn short_signal_name(sig: i32) -> Option<&'static str> {
    SIGNALS.iter().find(|&&(_, s)| s == sig).map(|&(n, _)| n)
}

/// `SIGKILL` for 9, `SIG40` for a number without a name.
pub fn signal_name(sig: i32) -> String {
    match short_signal_name(sig) {
        Some(n) => format!("SIG{}", n.to_ascii_uppercase()),
        None => format!("SIG{sig}"),
    }
}

/// Plan 9 notes and the signals they become. Plan 9 delivers arbitrary strings; Linux can
/// only deliver signals, so only these notes exist here and any other is EINVAL. The
/// `sys: …` notes are the ones the Plan 9 kernel itself posts for the matching faults.
pub const NOTES: &[(&str, i32)] = &[
    ("interrupt", libc::SIGINT),
    ("hangup", libc::SIGHUP),
    ("alarm", libc::SIGALRM),
    ("kill", libc::SIGKILL),
    ("quit", libc::SIGQUIT),
    ("term", libc::SIGTERM),
    ("stop", libc::SIGSTOP),
    ("cont", libc::SIGCONT),
    ("usr1", libc::SIGUSR1),
    ("usr2", libc::SIGUSR2),
    ("sys: write on closed pipe", libc::SIGPIPE),
    ("sys: trap: fault read", libc::SIGSEGV),
    ("sys: trap: fault write", libc::SIGSEGV),
    ("sys: trap: divide error", libc::SIGFPE),
    ("sys: trap: illegal instruction", libc::SIGILL),
    ("sys: breakpoint", libc::SIGTRAP),
];

/// The signal a note names; a single trailing newline is allowed.
pub fn note_signal(raw: &[u8]) -> Result<i32, BadWord> {
    let text = raw.strip_suffix(b"\n").unwrap_or(raw);
    let text = std::str::from_utf8(text).unwrap_or("");
    NOTES
        .iter()
        .find(|(n, _)| *n == text)
        .map(|&(_, s)| s)
        .ok_or_else(|| {
            BadWord(format!(
                "unknown note {:?} (known: {})",
                String::from_utf8_lossy(raw),
                NOTES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))
        })
}

/// The properties the ctl and note parsers keep for any input: no panic, and whatever is
/// accepted is exactly one known word (a trailing newline allowed), the same with or without
/// it. Run by the fuzz targets (`fuzz/`, `cargo xtask fuzz`) and, over a generated corpus, by
/// the unit tests.
#[cfg(any(test, fuzzing))]
pub fn fuzz_check(data: &[u8]) {
    let word = data.strip_suffix(b"\n").unwrap_or(data);
    match Command::parse(data) {
        Ok(cmd) => {
            let text = std::str::from_utf8(word).expect("accepted input is UTF-8");
            assert!(
                !text.is_empty()
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "accepted {text:?}"
            );
            assert_eq!(Command::parse(word), Ok(cmd));
            if let Command::Signal(sig) = cmd {
                assert!((1..=31).contains(&sig) && sig != libc::SIGKILL && sig != libc::SIGSTOP);
            }
        }
        Err(BadWord(msg)) => assert!(!msg.is_empty()),
    }
    match note_signal(data) {
        Ok(sig) => {
            assert!((1..=31).contains(&sig));
            assert!(NOTES.iter().any(|(n, s)| n.as_bytes() == word && *s == sig));
        }
        Err(BadWord(msg)) => assert!(!msg.is_empty()),
    }
}
