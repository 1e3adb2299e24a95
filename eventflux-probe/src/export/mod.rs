//! Exporters: each turns a collector [`Snapshot`](crate::collector::Snapshot) into one format.

pub mod otlp;
pub mod prometheus;
