//! `eventflux-probe run --pid PID`: attach to every eventflux probe of a running engine and
//! serve its metrics at `GET /metrics` until SIGINT or SIGTERM, which detach everything.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use eventflux_probe::bpf::Kernel;
use eventflux_probe::collector::Collector;
use eventflux_probe::export::prometheus::{self as prom, Options};
use eventflux_probe::http::GuardedListener;
use eventflux_probe::target::State as TargetState;
use tokio::net::TcpListener;

use super::target;

/// Default listen address. Port 9469: not Prometheus's own 9090, nor node_exporter's 9100, nor
/// the 9464 the OpenTelemetry Prometheus exporter uses, so it runs beside all three.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine process to observe.
    #[arg(long, value_name = "PID")]
    pid: u32,
    /// Address for the HTTP endpoints (/metrics). Loopback by default; use 0.0.0.0:9469 to be
    /// scraped from elsewhere.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Label sets per metric before further ones are folded into one `overflow` series.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = parse_max_series)]
    max_series: usize,
    /// Close an HTTP connection after this long without traffic (a client that connects and
    /// says nothing gives its slot back).
    #[arg(long, value_name = "D", value_parser = target::parse_duration, default_value = "10s")]
    http_idle_timeout: Duration,
    #[command(flatten)]
    budget: target::BudgetArgs,
}

fn parse_max_series(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (the cap on label sets per metric)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a number of series")),
    }
}

struct AppState {
    collector: Arc<Collector>,
    options: Options,
}

pub fn run(args: &Args) -> Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: &Args) -> Result<()> {
    let budget = args.budget.budget(Some(eventflux_probe::budget::RUN_SAMPLES_PER_SEC))?;
    let (target, binaries) = target::eventflux_binaries(args.pid)?;
    let target = Arc::new(target);
    let listener = TcpListener::bind(args.listen).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!(
            "cannot listen on {}: address already in use (another eventflux-probe or exporter?); choose another with --listen",
            args.listen
        ),
        _ => anyhow!("cannot listen on {}: {e}", args.listen),
    })?;

    // Keeps the kernel's BPF run-time statistics on while we run (the program metrics).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    // Every probe the metrics are made of, and the two control probes of our budget.
    let mut probes = eventflux_probe::bpf::metric_probes();
    probes.extend(budget.control_probes());
    let mut kernel = Kernel::load(&probes)?;
    let report = kernel.attach_process(args.pid, &binaries)?;
    for s in &report.skipped {
        tracing::warn!("not attached: {s}");
    }
    tracing::info!(
        pid = args.pid,
        probes = report.probes,
        sites = report.sites,
        attach_ms = report.elapsed.as_secs_f64() * 1e3,
        "attached"
    );
    tracing::info!("asked the engine for {budget}");
    let kernel = Arc::new(Mutex::new(kernel));
    let collector = Arc::new(Collector::new(Arc::clone(&kernel), Duration::from_millis(100))?);
    collector.add_target(Arc::clone(&target), report.probes);

    // Registrations arrive through a ring buffer: drain it often so it never fills.
    let drain = Arc::clone(&collector);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            drain.drain_events();
        }
    });
    let pid = args.pid;
    let watched = Arc::clone(&kernel);
    tokio::spawn(async move {
        match target.ended(Duration::from_millis(250)).await {
            TargetState::Execd(exe) => tracing::warn!(
                pid,
                exe = %exe.display(),
                "target exec'd another program: the probes were in the old one; treating it as exited, serving its final values until stopped"
            ),
            _ => tracing::info!(pid, "target exited; serving its final values until stopped"),
        }
        // Its probes are gone with its image; the attachments only hold kernel resources now.
        tokio::task::spawn_blocking(move || watched.lock().unwrap_or_else(|e| e.into_inner()).detach_all());
    });

    let state = Arc::new(AppState { collector, options: Options { max_series: args.max_series, pid_label: false } });
    let app = Router::new().route("/metrics", get(metrics)).with_state(state);
    // The address really bound: with port 0 the kernel chose one.
    let bound = listener.local_addr().unwrap_or(args.listen);
    let cap = eventflux_probe::http::connection_cap();
    tracing::info!(max_connections = cap, "serving http://{bound}/metrics");
    let listener = GuardedListener::new(listener, cap, args.http_idle_timeout);
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("HTTP server failed")?;
    let detaching = std::time::Instant::now();
    kernel.lock().unwrap_or_else(|e| e.into_inner()).detach_all();
    tracing::info!(pid, detach_ms = detaching.elapsed().as_secs_f64() * 1e3, "detached");
    Ok(())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let collector = Arc::clone(&state.collector);
    let snap = match tokio::task::spawn_blocking(move || collector.snapshot()).await {
        Ok(Ok(snap)) => snap,
        Ok(Err(e)) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the BPF maps: {e:#}\n")).into_response();
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("collector failed: {e}\n")).into_response(),
    };
    let body = prom::encode(&snap, &state.options);
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("stopping");
}
