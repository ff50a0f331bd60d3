//! What operators see: Prometheus metrics, the HTTP endpoint for metrics and health, and
//! the audit trail's queue in front of the store.

pub mod audit;
pub mod http;
pub mod metrics;
