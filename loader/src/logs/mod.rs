//! Log-driven bans: following logs, matching lines, counting offenders,
//! jails that turn failures into ban requests.
pub mod filter;
pub mod follow;
pub mod jail;
pub mod offenders;
pub mod watch;
