//! sipguard's userspace: the daemon and CLI around the XDP program.
//!
//! Layered by concern; each layer uses only the layers below it:
//!
//! | layer       | module          | concept                                                   |
//! |-------------|-----------------|-----------------------------------------------------------|
//! | `cli/`      | `cli`           | the `sipguard` command line: the verbs                    |
//! |             | `show`          | what the CLI prints: bans, counters, status, top          |
//! |             | `import`        | `sipguard import-fail2ban`                                |
//! |             | `test_filter`   | `sipguard test-filter`, the fail2ban-regex counterpart    |
//! |             | `trace`         | `sipguard trace`: each packet of a source, live           |
//! | `daemon`    |                 | `sipguard run`: load, attach, serve, shut down            |
//! | `config`    |                 | `/etc/sipguard/sipguard.toml`: settings, jails, `[flood]` |
//! | `freeswitch/`| `freeswitch`    | FreeSWITCH's ports, trunks and log, from its own config   |
//! |             | `walk`, `xml`   | its files read within bounds, as its X-PRE-PROCESS does   |
//! | `logs/`     | `filter`        | matching log lines: anchored built-ins, `<HOST>`          |
//! |             | `follow`        | following logs like `tail -F` across rotations            |
//! |             | `watch`         | inotify wake-ups for the followed logs' folders           |
//! |             | `jail`          | a filter + offenders + thresholds → ban requests          |
//! |             | `offenders`     | counting failures per source, memory-bounded              |
//! | `ops/`      | `readiness`     | `sd_notify`: ready, reloading, stopping, watchdog, status |
//! |             | `metrics`       | Prometheus metrics and their HTTP endpoint                |
//! |             | `notify`        | exec hooks and webhooks on ban and unban, digests         |
//! | `fleet/`    | `crowdsec`      | CrowdSec: its decisions enforced, detections sent as alerts |
//! |             | `redis`         | sipguard daemons sharing bans through Redis               |
//! |             | `apiban`        | the APIBAN SIP blocklist                                  |
//! | `trust/`    | `esl`, `client` | FreeSWITCH's event socket: bounded framing, the worker     |
//! |             | `registrations` | registration events and listing, the bounded registry    |
//! |             | `peer`          | who owns the local socket the ESL password would go to    |
//! |             | `operator`, `overload` | `sipguard trust` entries on disk; overload hysteresis |
//! | `bans/`     | `bans`          | the ban manager: every ban, merges, restore on start      |
//! |             | `remote`        | other origins' bans of a network, beside this box's own   |
//! |             | `never_ban`     | the allowlist: ignoreip, own, gateways, resolvers, allows |
//! |             | `packet_bans`   | bans on packet evidence: budget, scope, reserved room     |
//! | `store/`    | `store`         | everything on disk: one SQLite database, opened and read  |
//! |             | `records`       | the saved records: bans, counts, positions (plain data)   |
//! |             | `schema`        | the tables, views and connection settings                 |
//! |             | `writer`        | the writer thread: a batch a tick, one transaction each   |
//! |             | `restore`       | reading the state back at start, a ban at a time          |
//! |             | `offline`       | operator changes made while the daemon is stopped         |
//! |             | `import`        | the older state files, taken in once                      |
//! |             | `legacy`        | those files' readers and writers (state, snapshot, change log, journal) |
//! | `kernel/`   | `program`       | the embedded XDP object, attaching and pinned links       |
//! |             | `maps`          | typed access to the pinned kernel maps                    |
//! |             | `batch`         | batched map writes and reads (a million bans at start)    |
//! |             | `migrate`       | upgrades over pins of an older layout                     |
//! |             | `layout`        | the pinned layout: map shapes, its version, trie keys     |
//! |             | `bpffs`         | the BPF filesystem, pinned maps made by hand              |
//! |             | `clock`         | the one clock bans end by, and its state-file form        |
//! | bottom      | `control/`      | the control socket: root only, its clients capped         |
//! |             | `request`       | what a client asks, its values checked as they are read   |
//! |             | `reply`         | what the daemon answers: status, ban notes, changes made  |
//! |             | `defaults`      | default paths and ports                                   |
//! |             | `addr`          | `ADDR[/PREFIX]` parsing                                   |
//! |             | `net_table`     | a compact table by network, for a million entries         |
//! |             | `files`         | opening files never blocks: FIFOs, devices, sparse holes  |
//! |             | `text`          | outside text made safe to show: escapes, redacted URLs    |
//! |             | `duration`      | ban durations (`30`, `10m`, `1h30m`, `-1`)                |
pub mod addr;
pub mod bans;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod defaults;
pub mod duration;
pub mod files;
pub mod fleet;
pub mod freeswitch;
pub mod kernel;
pub mod logs;
pub mod net_table;
pub mod ops;
pub mod store;
pub mod text;
pub mod trust;
