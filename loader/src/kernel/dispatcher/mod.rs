//! libxdp's multi-program dispatcher (xdp-tools' `lib/libxdp/protocol.org`),
//! the pieces that run on a kernel whatever it allows: libxdp's freplace
//! check (`probe`) with its installed object (`object`); what is on an
//! interface's hook (`iface`, over `netlink`); the dispatcher's config
//! (`config`), a dispatcher built from libxdp's object (`build`), one found
//! on an interface read like libxdp (`state`, under libxdp's `lock`), and
//! dispatchers put on and swapped on the hook (`swap`).
//!
//! Joining a dispatcher also needs freplace (BPF_PROG_TYPE_EXT) programs in
//! its slots; kernels that refuse them (lockdown policies, sandboxes, the
//! test machine's) leave exclusive attachment the only way, and sipguard
//! attaches exclusively until joining is built and tested on such a kernel.
pub mod build;
pub mod config;
pub mod iface;
pub mod lock;
pub mod netlink;
pub mod object;
pub mod probe;
pub mod state;
pub mod swap;
