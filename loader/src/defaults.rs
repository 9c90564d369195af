//! Defaults shared by the configuration, the CLI and the daemon: one place,
//! so that no layer has to reach into another for them.

/// Where the maps and links are pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/sipguard";
/// The ports a stock FreeSWITCH may listen on: SIP on the internal (5060)
/// and external (5080) profiles, their TLS ports (5061, 5081), WS and WSS
/// (5066, 7443). Used when neither the configuration nor FreeSWITCH's own
/// (discovery) says otherwise.
pub const PORTS: [u16; 6] = [5060, 5061, 5066, 5080, 5081, 7443];
/// The daemon's control socket.
pub const SOCKET: &str = "/run/sipguard/sipguard.sock";
/// Bans, ban counts, the operator's allowlist, read positions.
pub const STATE_FILE: &str = "/var/lib/sipguard/state.json";
/// The configuration file.
pub const CONFIG: &str = "/etc/sipguard/sipguard.toml";
/// The Prometheus endpoint (node_exporter's neighbourhood: 9100 + ...).
pub const METRICS_LISTEN: &str = "127.0.0.1:9713";
/// Bytes of matched log lines the daemon keeps for its bans: the newest
/// bans' lines (see `bans::lines`), ~100 000 FreeSWITCH lines.
pub const LINE_MEMORY: usize = 16 << 20;
