//! The state files sipguard wrote before the database: the state file
//! (binary snapshot, or the JSON of older versions), its read positions,
//! its change log, and the offline journal. The daemon still writes them
//! until it is moved onto the database; after that they are only read,
//! once, by `store::import`.
pub mod changes;
pub mod journal;
pub mod sliced;
pub mod snapshot;
pub mod state;
pub mod torn;
