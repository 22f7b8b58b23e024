//! Elara's daemon and CLI as a library; `main.rs` parses arguments and calls in.
//!
//! # The request flow
//!
//! ```text
//!  Docker plugin socket ─┐
//!  REST (unix / TLS TCP)─┼─▶ api (doors: protocol only) ─▶ ops (the operations layer)
//!  CLI (talks REST)     ─┘                                  │
//!                                     ┌─────────────────────┼──────────────────────┐
//!                                     ▼                     ▼                      ▼
//!                      store (redb | etcd)     scheduler (pool reports)    runtime (wasm drivers)
//!                                                           │
//!                                                           ▼
//!                                 attach (host powers: loop, mkfs, mount, FUSE, iSCSI, NFS)
//!                                 backup (the block and file engines, targets)
//! ```
//!
//! # Modules, and who may use whom
//!
//! `server` starts a daemon: it opens the store and the runtime and serves the doors. The doors
//! (`api::rest`, `api::docker`, `api::tcp`, `api::backups`) parse, call `ops`, and map its errors;
//! the CLI (`cli`) is a REST client. `ops` holds every operation and the reconciler that finishes
//! or undoes them after a crash; it alone uses `attach` (turn a driver's connection into a mount,
//! and take it down exactly) and `backup` (the engines). `model` is the records kept in the
//! store; `config` the daemon's settings; `data_dir` keeps the daemon's own files private;
//! `redact` is what a view masks; `validate` names and sizes; `error` the API's error type.
//! `attach` and `backup` import nothing from the daemon's other modules (each could be a crate of
//! its own); `model` may name `attach::AttachState`, never the other way round.
//! `scripts/check-modules.py` lists the edges and fails on a cycle (run by `scripts/test.sh`).

pub mod api;
pub mod attach;
pub mod backup;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod model;
pub mod ops;
pub mod redact;
pub mod server;
pub mod validate;
