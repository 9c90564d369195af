//! The kernel side: the XDP program, its pinned maps, their layout version,
//! the BPF filesystem, and the clock the kernel ends bans by.
pub mod batch;
pub mod bpffs;
pub mod clock;
pub mod dispatcher;
pub mod layout;
pub mod maps;
pub mod migrate;
pub mod program;
pub mod trace_lease;
pub mod trust;
