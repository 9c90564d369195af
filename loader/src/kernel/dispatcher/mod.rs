//! libxdp's multi-program dispatcher (xdp-tools' `lib/libxdp/protocol.org`):
//! finding the dispatcher object libxdp ships, and asking the kernel whether
//! it lets programs be put in a dispatcher's slots at all.
//!
//! Only the parts that can be checked on a running kernel are here: joining a
//! dispatcher needs `freplace` (BPF_PROG_TYPE_EXT) programs, and kernels that
//! refuse them (lockdown policies, sandboxes) leave `exclusive` the only way
//! to attach.
pub mod build;
pub mod config;
pub mod iface;
pub mod lock;
pub mod netlink;
pub mod object;
pub mod probe;
pub mod state;
pub mod swap;
