//! sipguard's userspace: the daemon and CLI around the XDP program.
//!
//! | module        | concept                                                          |
//! |---------------|------------------------------------------------------------------|
//! | `cli`         | the `sipguard` command line                                      |
//! | `show`        | what the CLI prints: bans, counters, status, top                 |
//! | `daemon`      | `sipguard run`: the engine, its loop, reload, shutdown           |
//! | `config`      | `/etc/sipguard/sipguard.toml`: settings, jails, `[flood]`        |
//! | `filter`      | matching log lines: built-in FreeSWITCH filters, `<HOST>`        |
//! | `follow`      | following logs like `tail -F` across rotations                   |
//! | `watch`       | inotify wake-ups for the followed logs' folders                  |
//! | `jail`        | a filter + offenders + thresholds → ban requests                 |
//! | `offenders`   | counting failures per source, memory-bounded                     |
//! | `never_ban`   | ignoreip, loopback, own addresses, gateways, resolvers            |
//! | `packet_bans` | bans on packet evidence: budget, scope, reserved room            |
//! | `journal`     | operator changes made while the daemon is stopped                |
//! | `defaults`    | default paths and ports, shared by every layer                   |
//! | `bans`        | the ban manager: every ban, its metadata, restore on start       |
//! | `state`       | the state file: atomic saves, bans, positions                    |
//! | `control`     | the root-only control socket (status, ban, unban, reload)        |
//! | `migrate`     | the pinned maps' layout version, upgrades over old pins          |
//! | `maps`        | typed access to the pinned kernel maps                           |
//! | `program`     | the embedded XDP object, attaching and pinned links              |
//! | `bpffs`       | making sure the BPF filesystem is there                          |
//! | `test_filter` | `sipguard test-filter`, the fail2ban-regex counterpart           |
//! | `import`      | `sipguard import-fail2ban`                                       |
//! | `addr`        | `ADDR[/PREFIX]` parsing                                          |
//! | `duration`    | ban durations (`30`, `10m`, `1h30m`, `-1`)                       |
//! | `clock`       | the monotonic clock the kernel times bans with                   |
pub mod addr;
pub mod bans;
pub mod bpffs;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod defaults;
pub mod duration;
pub mod filter;
pub mod follow;
pub mod import;
pub mod jail;
pub mod journal;
pub mod maps;
pub mod migrate;
pub mod never_ban;
pub mod offenders;
pub mod packet_bans;
pub mod program;
pub mod show;
pub mod state;
pub mod test_filter;
pub mod watch;
