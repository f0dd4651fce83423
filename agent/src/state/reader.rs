//! Drains the kernel's ring buffer. Records are submitted without a wake-up (a wake-up per
//! record costs the traced workload ~20 %), so the reader drains on a short timer and wakes
//! early only when the kernel side forces it because a backlog built up.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};

use super::{Queries, State};
use crate::kernel::KernelEvent;

pub async fn run(
    ring: RingBuf<MapData>,
    state: State,
    Queries(mut queries): Queries,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let batch = drain(guard.get_inner_mut());
                guard.clear_ready();
                if !batch.is_empty() && state.push_events(batch).await.is_err() { break; }
            }
            _ = tick.tick() => {
                let batch = drain(fd.get_mut());
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
