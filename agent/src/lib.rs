//! bpfproc: a live /proc kept by eBPF, served over FUSE, HTTP (JSON, Prometheus) and to
//! terminal clients.
//!
//! The modules are layers; each imports only from the layers below it (a unit test,
//! `layers::imports_only_go_down`, reads every `use crate::` and holds the order):
//!
//! 1. `sys`: the host's clocks, capabilities, user names, cgroups, page size, and descriptors
//!    kept across the agent's restarts.
//! 2. `btf`, `procfs`: the running kernel's type information, and /proc's files read as data.
//! 3. `kernel`: the BPF programs, their maps and the ring buffer.
//! 4. `table`: the process table's rules, pure.
//! 5. `groups`: the metrics' process groups, pure over the table.
//! 6. `state`: the table's actor, and the ring reader that feeds it.
//! 7. `view`: the renderers of every personality's files, pure.
//! 8. `control`: ptrace and signals for the control files.
//! 9. `fs`: the FUSE views.
//! 10. `otlp`: the OpenTelemetry (OTLP) export of metrics and exit/exec log records.
//! 11. `metrics`: the Prometheus exposition.
//! 12. `http`, `socket`: the HTTP API and the local mount socket.
//! 13. `config`: the agent's settings.
//! 14. `client`, `mount_helper`: the terminal and control clients, mount(8)'s helper.
//! 15. `daemon`: the wiring of the whole agent.
//!
//! docs/architecture.md draws the same picture and says where each kind of change goes.

pub mod sys;

pub mod btf;
pub mod procfs;

pub mod kernel;

pub mod table;

pub mod groups;

pub mod state;

pub mod view;

pub mod control;

pub mod fs;

pub mod otlp;

pub mod metrics;

pub mod http;
pub mod socket;

pub mod config;

pub mod client;
pub mod mount_helper;

pub mod daemon;

#[cfg(test)]
mod fuzz_corpus;
#[cfg(test)]
mod layers;
