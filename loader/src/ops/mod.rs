//! Running sipguard as a service: readiness for the service manager,
//! Prometheus metrics, and notifications on ban and unban.
pub mod metrics;
pub mod notify;
pub mod readiness;
