//! The clocks every kernel timestamp is read against.

/// Boot-clock nanoseconds (CLOCK_BOOTTIME), the clock of every kernel timestamp we get.
pub fn boot_ns() -> u64 {
    // CLOCK_BOOTTIME always exists on Linux; the zero is never seen.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// USER_HZ: the unit of the tick counts /proc shows.
pub fn clock_ticks() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// Nanoseconds in one of those ticks.
pub fn ns_per_tick() -> u64 {
    1_000_000_000 / clock_ticks()
}
