//! Exporters: each formats the [`Model`](crate::model::Model) one way.

pub mod buckets;
pub mod health;
pub mod metrics;
pub mod openmetrics;
pub mod otlp;
pub mod profile;
pub mod prometheus;
pub mod protobuf;
pub mod top;
