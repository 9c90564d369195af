//! sipguard's userspace: the daemon and CLI around the XDP program.
//!
//! | module    | concept                                                      |
//! |-----------|--------------------------------------------------------------|
//! | `cli`     | the `sipguard` command line                                  |
//! | `daemon`  | `sipguard run`: load, attach, sweep, detach                  |
//! | `program` | the embedded XDP object, attaching and pinned links          |
//! | `maps`    | typed access to the pinned kernel maps                       |
//! | `addr`    | `ADDR[/PREFIX]` parsing                                      |
//! | `duration`| ban durations (`30`, `10m`, `1h30m`, `-1`)                   |
//! | `clock`   | the monotonic clock the kernel times bans with               |
//! | `bpffs`   | making sure the BPF filesystem is there                      |
pub mod addr;
pub mod bans;
pub mod bpffs;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod duration;
pub mod filter;
pub mod follow;
pub mod ignore;
pub mod import;
pub mod jail;
pub mod maps;
pub mod offenders;
pub mod program;
pub mod show;
pub mod state;
pub mod test_filter;
pub mod watch;
