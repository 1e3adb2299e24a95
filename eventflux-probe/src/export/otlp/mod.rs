//! OTLP export: the span trees of sampled batches ([`traces`]) and the model as OTLP metrics
//! ([`metrics`]), to an OpenTelemetry Collector over gRPC or HTTP/protobuf.
//!
//! Both signals share the collector's address, protocol, resource attributes and timeout
//! (`[otlp]`, the standard `OTEL_*` variables; `cmd::flags::otlp_options` resolves them). Neither
//! ever makes the engine wait: they read what the kernel already counted or queued, and a
//! failed export is counted and shown in `/health`, never retried in a tight loop.

pub mod metrics;
pub mod options;
pub mod tls;
pub mod traces;

use anyhow::Result;

pub use metrics::MetricsExporter;
pub use options::Options;
pub use traces::Exporter;

/// `/health`'s `observer.otlp`: the traces' figures (zero when only metrics are exported) and
/// the metrics'.
pub fn state(traces: Option<&Exporter>, metrics: Option<&MetricsExporter>) -> Option<crate::model::OtlpState> {
    let mut state = match (traces, metrics) {
        (None, None) => return None,
        (Some(t), _) => t.state(),
        (None, Some(_)) => crate::model::OtlpState::default(),
    };
    state.metrics = metrics.map(MetricsExporter::state);
    Some(state)
}

/// The exporters [`start`] started: the span exporter, and the metrics exporter (not running
/// yet: it needs its model source, [`MetricsExporter::run`]).
pub type Started = (Option<std::sync::Arc<Exporter>>, Option<std::sync::Arc<MetricsExporter>>);

/// Starts the OTLP exports `options` ask for on the current runtime: the span exporter (its
/// worker spawned; targets are added as they come), and the metrics exporter with its
/// transport, to be run with its model source once the service exists.
pub fn start(options: &Options) -> Result<Started> {
    tls::install_provider();
    let traces = if options.traces {
        let (exporter, worker) = Exporter::start(options.clone())?;
        tokio::spawn(worker.run());
        let state = exporter.state();
        tracing::info!(endpoint = state.endpoint, protocol = state.protocol, "exporting traces over OTLP");
        Some(exporter)
    } else {
        None
    };
    let metrics = match &options.metrics {
        Some(m) => {
            let transport = metrics::Transport::new(m, options.timeout)?;
            let exporter = std::sync::Arc::new(MetricsExporter::new(m.clone(), options.resource(), transport));
            let state = exporter.state();
            tracing::info!(
                endpoint = state.endpoint,
                temporality = state.temporality,
                interval_s = m.interval.as_secs_f64(),
                "exporting metrics over OTLP"
            );
            Some(exporter)
        }
        None => None,
    };
    Ok((traces, metrics))
}
