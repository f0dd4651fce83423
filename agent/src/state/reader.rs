//! Drains the kernel's ring buffer. Records are submitted without a wake-up (a wake-up per
//! record costs the traced workload ~20 %), so the reader drains on a short timer and wakes
//! early only when the kernel side forces it because a backlog built up.
//!
//! A timer every 10 ms is 100 wake-ups a second on a host where nothing happens, which was
//! two thirds of an idle agent's CPU. So after `PARK_AFTER` empty drains in a row the reader
//! parks: it sets the kernel's flag, and the next record submitted clears it and wakes the
//! reader at once. Parked, it still drains every `PARKED_PERIOD`: a record whose program read
//! the flag just before it was set is submitted without a wake-up, and would otherwise wait
//! for the next one. Queries drain first either way, so no answer misses a record.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch, time::Instant};

use super::{Queries, State};
use crate::kernel::{KernelEvent, Parking};

/// Empty drains in a row before the reader parks (100 ms at the default period).
const PARK_AFTER: u32 = 10;
/// How often a parked reader drains anyway (or every `--drain-ms`, if that is longer).
const PARKED_PERIOD: Duration = Duration::from_secs(1);

pub async fn run(
    ring: RingBuf<MapData>,
    mut parking: Option<Parking>,
    state: State,
    Queries(mut queries): Queries,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut lull = Lull::default();
    let mut next = Instant::now() + period;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let batch = drain(guard.get_inner_mut());
                guard.clear_ready();
                // The kernel cleared the flag when it woke us (or it was never set).
                lull = Lull::default();
                state.latest.reader_woken.fetch_add(1, Relaxed);
                next = Instant::now() + period;
                if !batch.is_empty() && state.push_events(batch).await.is_err() { break; }
            }
            _ = tokio::time::sleep_until(next) => {
                let mut batch = drain(fd.get_mut());
                match (&mut parking, lull.after(batch.is_empty())) {
                    (Some(p), Step::Park) => {
                        if let Err(e) = p.set(true) {
                            // Tried again, it would warn every drain: poll as before parking.
                            tracing::warn!("cannot park the ring reader; it polls from now on: {e}");
                            parking = None;
                            lull.parked = false;
                        } else {
                            state.latest.reader_parks.fetch_add(1, Relaxed);
                            // Whatever was submitted before the flag was up, without a
                            // wake-up: if anything was, the lull is over.
                            let late = drain(fd.get_mut());
                            if !late.is_empty() {
                                let _ = p.set(false);
                                lull = Lull::default();
                            }
                            batch.extend(late);
                        }
                    }
                    (Some(p), Step::Unpark) => {
                        let _ = p.set(false);
                    }
                    (None, _) => lull.parked = false,
                    _ => {}
                }
                next = Instant::now() + if lull.parked { PARKED_PERIOD.max(period) } else { period };
                if !batch.is_empty() && state.push_events(batch).await.is_err() { break; }
            }
            query = queries.recv() => {
                let Some(query) = query else { break };
                let batch = drain(fd.get_mut());
                if !batch.is_empty() && state.push_events(batch).await.is_err() { break; }
                if state.forward(query).await.is_err() { break; }
            }
            _ = shutdown.changed() => break,
        }
    }
    Ok(())
}

/// How long the ring has been empty, and whether the reader is parked.
#[derive(Default)]
struct Lull {
    empty: u32,
    parked: bool,
}

#[derive(Debug, PartialEq)]
enum Step {
    Stay,
    Park,
    Unpark,
}

impl Lull {
    /// After a timed drain that found the ring `empty` or not: what to do with the flag.
    fn after(&mut self, empty: bool) -> Step {
        if !empty {
            self.empty = 0;
            // Records the flag did not announce: the race above. Poll again.
            return if std::mem::take(&mut self.parked) {
                Step::Unpark
            } else {
                Step::Stay
            };
        }
        self.empty = self.empty.saturating_add(1);
        if !self.parked && self.empty >= PARK_AFTER {
            self.parked = true;
            return Step::Park;
        }
        Step::Stay
    }
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<KernelEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match KernelEvent::decode(&item) {
            Some(ev) => out.push(ev),
            None => tracing::warn!(len = item.len(), "undecodable ring-buffer record"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parks_after_a_lull_and_polls_again_after_a_record_it_was_not_woken_for() {
        let mut l = Lull::default();
        for _ in 1..PARK_AFTER {
            assert_eq!(l.after(true), Step::Stay);
        }
        assert_eq!(l.after(true), Step::Park);
        assert!(l.parked);
        // Parked, empty drains change nothing.
        assert_eq!(l.after(true), Step::Stay);
        assert!(l.parked);
        // A record found by the slow drain: the flag is still up, take it down.
        assert_eq!(l.after(false), Step::Unpark);
        assert!(!l.parked);
        // And the count starts over.
        for _ in 1..PARK_AFTER {
            assert_eq!(l.after(true), Step::Stay);
        }
        assert_eq!(l.after(true), Step::Park);
    }

    #[test]
    fn records_keep_the_reader_polling() {
        let mut l = Lull::default();
        for _ in 0..3 * PARK_AFTER {
            assert_eq!(l.after(true), Step::Stay);
            assert_eq!(l.after(false), Step::Stay);
        }
        assert!(!l.parked);
    }
}
