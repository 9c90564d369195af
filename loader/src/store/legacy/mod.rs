//! The state files the daemon keeps: the state file (binary snapshot, or
//! the JSON of older versions, still read), its read positions, its change
//! log, the offline journal, and the snapshot's writer thread (`sliced`).
pub mod changes;
pub mod journal;
pub mod overrides;
pub mod sliced;
pub mod snapshot;
pub mod state;
pub mod torn;
