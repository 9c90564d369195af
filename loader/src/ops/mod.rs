//! Running sipguard as a service: readiness for the service manager.
pub mod readiness;
