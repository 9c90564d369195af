//! Running sipguard as a service: readiness for the service manager,
//! Prometheus metrics, notifications on ban and unban, and what FreeSWITCH's
//! own configuration says.
pub mod discovery;
pub mod metrics;
pub mod notify;
pub mod readiness;
