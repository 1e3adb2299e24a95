//! `top`: the engines at a glance, live in the terminal. Not a collector of its own: with a
//! pid it runs the `run` service inside itself (without HTTP), without one node mode's, and
//! with `--url` it reads another observer's `/metrics` (protobuf) and `/health`. Every
//! refresh takes a [`Reading`] of that source; the [`View`] of the rates over the window is
//! drawn full-screen, printed once as text, or printed as one JSON document per refresh.
//!
//! The terminal is restored however `top` ends: `q` or Ctrl-C (raw mode turns it into a key),
//! SIGTERM, SIGHUP or SIGINT, an error, and a panic (ratatui's hook restores it before the
//! message is printed). When the target exits, its last values stay on screen with a line
//! that says so; the embedded service detaches from it then, as `run` does.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ratatui::crossterm::event::{self, Event};

use super::node::{Node, NodeOptions};
use super::run::{RunService, ServeOptions};
use super::service::{Embedded, Stopper};
use crate::export::top::controls::{Action, Controls};
use crate::export::top::draw::{self, Status};
use crate::export::top::reading::Reading;
use crate::export::top::view::View;
use crate::model::Model;

/// What `top` observes.
pub enum Source {
    /// One engine, through the `run` service.
    Pid(ServeOptions),
    /// Every engine of the host, through node mode.
    Node(NodeOptions),
    /// Another observer's endpoints: `http://HOST:PORT`.
    Url(String),
}

/// How `top` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Full-screen, refreshed, with keys.
    Screen,
    /// One frame as plain text, once the window is covered.
    Once,
    /// One JSON document (a line) per refresh.
    Json,
}

pub struct TopOptions {
    pub refresh: Duration,
    pub window: Duration,
    pub output: Output,
    /// Columns of the `--once` frame.
    pub width: u16,
}

/// A service `top` runs inside itself, or reads from afar.
enum Feed {
    /// `run`'s service or node mode's, inside `top`.
    Inside {
        service: Arc<dyn Observed>,
        stop: Stopper,
        task: tokio::task::JoinHandle<Result<()>>,
        /// What the title says: `pid 123`, or every engine of the host.
        what: String,
        /// `run`'s: its one target's exit ends the figures.
        one_target: bool,
    },
    Url {
        client: reqwest::Client,
        base: String,
    },
}

/// What `top` reads of the services it embeds.
trait Observed: super::http::Service {
    fn model(&self) -> Result<Model>;
}

impl Observed for RunService {
    fn model(&self) -> Result<Model> {
        RunService::model(self)
    }
}

impl Observed for Node {
    fn model(&self) -> Result<Model> {
        Node::model(self)
    }
}

async fn read_service(service: &Arc<dyn Observed>) -> Result<Reading> {
    let s = Arc::clone(service);
    // Reading the maps is a few syscalls per entry: off the async thread, as the services do.
    tokio::task::spawn_blocking(move || {
        let model = s.model()?;
        let (_, health) = super::http::Service::health(&*s)?;
        Ok(Reading::of_model(&model, &health, Instant::now()))
    })
    .await
    .map_err(|e| anyhow::Error::new(Fatal(format!("reading the model failed: {e}"))))?
}

/// A failure `top` does not try again: a panic (ratatui's hook has restored the terminal
/// already) or the embedded service gone.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(String);

/// Starts a service inside `top`: its handle once it serves, or the error it stopped with (a
/// wrong pid, no probes, not root), or `None` when a signal stopped it while it attached.
async fn embed<S: Send + Sync + 'static>(
    start: impl FnOnce(super::service::Embedder<S>) -> tokio::task::JoinHandle<Result<()>>,
) -> Result<Option<(Embedded<S>, tokio::task::JoinHandle<Result<()>>)>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = start(tx);
    match rx.await {
        Ok(embedded) => Ok(Some((embedded, task))),
        Err(_) => match task.await {
            Ok(Ok(())) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow!("service task failed: {e}")),
        },
    }
}

impl Feed {
    fn inside<S: Observed>(
        embedded: Embedded<S>,
        task: tokio::task::JoinHandle<Result<()>>,
        what: String,
        one_target: bool,
    ) -> Feed {
        Feed::Inside { service: embedded.service, stop: embedded.stop, task, what, one_target }
    }

    async fn start(source: Source) -> Result<Option<Feed>> {
        Ok(match source {
            Source::Pid(options) => {
                let what = format!("pid {}", options.pid);
                embed(|tx| tokio::spawn(super::run::serve(options, Some(tx))))
                    .await?
                    .map(|(e, task)| Feed::inside(e, task, what, true))
            }
            Source::Node(options) => embed(|tx| tokio::spawn(super::node::serve(options, Some(tx))))
                .await?
                .map(|(e, task)| Feed::inside(e, task, "every engine of this host".into(), false)),
            Source::Url(url) => {
                crate::export::otlp::tls::install_provider();
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(3))
                    .build()
                    .map_err(|e| anyhow!("cannot make an HTTP client: {e}"))?;
                let feed = Feed::Url { client, base: url.trim_end_matches('/').to_owned() };
                // The common mistakes (nothing listening, not an observer) fail before the screen.
                feed.read().await?;
                Some(feed)
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Feed::Inside { what, .. } => what.clone(),
            Feed::Url { base, .. } => base.clone(),
        }
    }

    async fn read(&self) -> Result<Reading> {
        match self {
            Feed::Inside { task, .. } if task.is_finished() => {
                Err(anyhow::Error::new(Fatal("the observer service inside top stopped".into())))
            }
            Feed::Inside { service, .. } => read_service(service).await,
            Feed::Url { client, base } => {
                let get = |path: &str, accept: &'static str| {
                    let url = format!("{base}{path}");
                    async move {
                        let r = client.get(&url).header("accept", accept).send().await.map_err(|e| {
                            anyhow!(
                                "cannot read {url}: {} (is `eventflux-probe run` or `node` serving there?)",
                                crate::export::otlp::tls::error_chain(&e)
                            )
                        })?;
                        let status = r.status();
                        let body = r.bytes().await.map_err(|e| anyhow!("cannot read {url}: {e}"))?;
                        Ok::<_, anyhow::Error>((status, body))
                    }
                };
                let (status, page) = get("/metrics", crate::export::protobuf::CONTENT_TYPE).await?;
                let at = Instant::now();
                if !status.is_success() {
                    bail!("{base}/metrics answered {status}: not an eventflux-probe endpoint?");
                }
                let (_, health) = get("/health", "application/json").await?;
                let health: serde_json::Value = serde_json::from_slice(&health)
                    .map_err(|_| anyhow!("{base}/health is not JSON: not an eventflux-probe endpoint?"))?;
                Reading::of_page(&page, &health, at).map_err(|e| anyhow!("{base}: {e}"))
            }
        }
    }

    /// Why the figures stopped moving for good, if they did: the one target gone (`run`'s).
    fn ended(&self, reading: &Reading) -> Option<String> {
        // Node mode's engines come and go: only one target's exit ends the figures.
        let one_target = matches!(self, Feed::Inside { one_target: true, .. }) || reading.one_target;
        let gone: Vec<String> = reading
            .engines
            .values()
            .filter(|e| e.state != "running")
            .map(|e| format!("process {} {}", e.pid, e.state))
            .collect();
        (one_target && !gone.is_empty() && gone.len() == reading.engines.len())
            .then(|| format!("{}: its last values stay on screen", gone.join(", ")))
    }

    /// Stops an embedded service and waits for it to detach.
    async fn stop(self) -> Result<()> {
        let Feed::Inside { stop, task, .. } = self else { return Ok(()) };
        stop.stop();
        match task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow!("service task failed: {e}")),
        }
    }
}

/// Readings of the window, and one more: the oldest is the rates' base.
struct Readings {
    kept: VecDeque<Reading>,
    window: Duration,
}

impl Readings {
    fn push(&mut self, r: Reading) {
        let at = r.at;
        self.kept.push_back(r);
        while self.kept.len() > 2 && self.kept.get(1).is_some_and(|r| at.duration_since(r.at) >= self.window) {
            self.kept.pop_front();
        }
    }

    /// Whether every engine of the last reading has one at least `span` before it.
    fn covered(&self, span: Duration) -> bool {
        let Some(last) = self.kept.back() else { return false };
        last.engines
            .keys()
            .all(|pid| self.kept.iter().any(|r| r.engines.contains_key(pid) && last.at.duration_since(r.at) >= span))
    }

    fn view(&self, c: &Controls) -> View {
        View::new(&self.kept, self.window, &c.order)
    }
}

/// Says, before anything attaches, that the screen needs a terminal.
pub fn check_terminal(output: Output) -> Result<()> {
    if output == Output::Screen && !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
        bail!(
            "top draws full-screen and stdout or stdin is not a terminal: use --once for one plain-text frame, or --json for one JSON document per refresh"
        );
    }
    Ok(())
}

/// Runs `top` until `q`, a signal, or (`--once`) the first full window.
pub async fn run(source: Source, options: TopOptions) -> Result<()> {
    check_terminal(options.output)?;
    let mut signals = TopSignals::install()?;
    let Some(feed) = Feed::start(source).await? else { return Ok(()) };
    let mut readings = Readings { kept: VecDeque::new(), window: options.window };
    let result = match options.output {
        Output::Screen => screen(&feed, &mut readings, &options, &mut signals).await,
        Output::Once => once(&feed, &mut readings, &options, &mut signals).await,
        Output::Json => json(&feed, &mut readings, &options, &mut signals).await,
    };
    let stopped = feed.stop().await;
    result.and(stopped)
}

/// SIGTERM, SIGHUP and SIGINT: each ends `top` (the terminal is restored first).
struct TopSignals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl TopSignals {
    fn install() -> Result<TopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let on = |k: SignalKind, name: &str| signal(k).map_err(|e| anyhow!("cannot handle {name}: {e}"));
        Ok(TopSignals {
            term: on(SignalKind::terminate(), "SIGTERM")?,
            hup: on(SignalKind::hangup(), "SIGHUP")?,
            int: on(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    async fn any(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Why the figures are not moving: for good (the target exited) or for now (a read failed;
/// the next refresh tries again).
#[derive(Debug, Default)]
struct Stalled {
    ended: Option<String>,
    failing: Option<String>,
}

impl Stalled {
    fn line(&self) -> Option<String> {
        self.ended.clone().or_else(|| self.failing.clone())
    }
}

fn status(feed: &Feed, options: &TopOptions, stalled: &Stalled) -> Status {
    Status { source: feed.describe(), refresh_seconds: options.refresh.as_secs_f64(), ended: stalled.line() }
}

/// Takes a reading into `readings`, unless the figures ended for good; `Err` for what is not
/// tried again ([`Fatal`]).
async fn take(feed: &Feed, readings: &mut Readings, stalled: &mut Stalled) -> Result<()> {
    if stalled.ended.is_some() {
        return Ok(());
    }
    match feed.read().await {
        Ok(r) => {
            stalled.failing = None;
            match feed.ended(&r) {
                // The values before the exit stay: the reading after it has no new counts.
                Some(why) => stalled.ended = Some(why),
                None => readings.push(r),
            }
        }
        Err(e) if e.is::<Fatal>() => return Err(e),
        Err(e) => stalled.failing = Some(format!("{e:#}; the last values stay on screen, trying again")),
    }
    Ok(())
}

async fn once(feed: &Feed, readings: &mut Readings, o: &TopOptions, signals: &mut TopSignals) -> Result<()> {
    let mut stalled = Stalled::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(o.refresh);
    loop {
        tokio::select! {
            _ = tick.tick() => take(feed, readings, &mut stalled).await?,
            () = signals.any() => break,
        }
        // Every engine rated over the whole window (node mode finds and attaches engines after
        // the start), but not for ever: an engine that keeps coming and going has `-` rates.
        let enough = started.elapsed() >= o.window && readings.covered(o.window.saturating_sub(o.refresh / 2));
        if stalled.ended.is_some() || enough || started.elapsed() >= o.window * 3 + Duration::from_secs(10) {
            break;
        }
    }
    print!(
        "{}",
        draw::text(&readings.view(&Controls::default()), &Controls::default(), &status(feed, o, &stalled), o.width)
    );
    std::io::stdout().flush().context("cannot write to stdout")
}

async fn json(feed: &Feed, readings: &mut Readings, o: &TopOptions, signals: &mut TopSignals) -> Result<()> {
    let mut stalled = Stalled::default();
    let mut tick = tokio::time::interval(o.refresh);
    loop {
        tokio::select! {
            _ = tick.tick() => take(feed, readings, &mut stalled).await?,
            () = signals.any() => return Ok(()),
        }
        if let Some(why) = &stalled.ended {
            eprintln!("eventflux-probe top: {why}");
            return Ok(());
        }
        // A document per refresh that has a new reading: a failed read prints nothing.
        if let Some(why) = &stalled.failing {
            eprintln!("eventflux-probe top: {why}");
            continue;
        }
        let mut doc = serde_json::to_value(readings.view(&Controls::default()))?;
        doc["source"] = feed.describe().into();
        doc["unix_ms"] = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .into();
        // Locked per document only: a log line to stdout (`--log-output stdout`) goes between.
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
        out.flush()?;
    }
}

/// Terminal events, from a thread of their own (crossterm's reads block).
fn terminal_events() -> tokio::sync::mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            // Polled so the thread notices the loop is gone.
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) if tx.is_closed() => return,
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

async fn screen(feed: &Feed, readings: &mut Readings, o: &TopOptions, signals: &mut TopSignals) -> Result<()> {
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            // Raw mode may be on already: undo what was done.
            let _ = ratatui::try_restore();
            return Err(anyhow!("cannot set up the terminal: {e}"));
        }
    };
    let result = async {
        let mut events = terminal_events();
        let mut controls = Controls::default();
        let mut stalled = Stalled::default();
        let mut tick = tokio::time::interval(o.refresh);
        let mut view = View::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !controls.paused {
                        take(feed, readings, &mut stalled).await?;
                        view = readings.view(&controls);
                    }
                }
                ev = events.recv() => match ev {
                    Some(Event::Key(key)) => match controls.key(key, &view) {
                        Action::Quit => return Ok(()),
                        Action::Redraw => view = readings.view(&controls),
                        Action::Nothing => continue,
                    },
                    Some(_) => {}
                    None => bail!("the terminal's input ended"),
                },
                () = signals.any() => return Ok(()),
            }
            controls.clamp(&view);
            let status = status(feed, o, &stalled);
            terminal
                .draw(|f| draw::draw(f.area(), f.buffer_mut(), &view, &controls, &status))
                .context("cannot draw on the terminal")?;
        }
    }
    .await;
    // Not `restore()`: on a terminal that hung up its error would be printed to a stderr that
    // fails too, and panic.
    let _ = ratatui::try_restore();
    result
}
