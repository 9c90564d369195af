//! Running sipguard as a service: readiness for the service manager,
//! Prometheus metrics.
pub mod metrics;
pub mod readiness;
