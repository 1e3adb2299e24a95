//! Names for the ids that hot-path probes carry, and their replay to late observers.
//!
//! Streams, queries and components are registered once, usually before any tracer is attached. An observer
//! that attaches to a running engine still needs the id → name table, so every registration is
//! kept here and fired again whenever the set of tools attached to the registration probes
//! changes, and every `flusher::REFRESH` while any is attached (the kernel raises a semaphore
//! once per process, so a tool that joins another changes no count). The flusher thread
//! checks once per interval, off the engine's paths.

use std::ffi::CString;
use std::sync::Mutex;
#[cfg(feature = "enabled")]
use std::sync::atomic::{AtomicU32, Ordering};

use eventflux_abi::{ComponentKind, JunctionKind, StreamRole, WindowKind};

/// A stream definition, as announced by `stream_register`.
#[derive(Debug, Clone, Copy)]
pub struct StreamInfo<'a> {
    /// Small integer id carried by hot-path probes; unique among streams.
    pub id: u32,
    /// Stream name, exported as the `stream_name` label.
    pub name: &'a str,
    /// Fed by sources or written by queries.
    pub role: StreamRole,
    /// Synchronous or queued delivery to subscribers.
    pub junction: JunctionKind,
    /// Queue capacity in chunks (0 for a synchronous junction).
    pub capacity: u64,
}

/// A query definition, as announced by `query_register`.
#[derive(Debug, Clone, Copy)]
pub struct QueryInfo<'a> {
    /// Small integer id carried by hot-path probes; unique among queries.
    pub id: u32,
    /// Query name, exported as the `query_id` label; empty for a query the application left
    /// unnamed (eventflux-probe then calls it `into_` and its output stream's name).
    pub name: &'a str,
    /// Id of the stream it consumes.
    pub input_stream: u32,
    /// Id of the stream it inserts into.
    pub output_stream: u32,
    /// Its window processor.
    pub window: WindowKind,
    /// Window length in events, or in milliseconds for time windows.
    pub window_size: u64,
}

/// A component beyond the query pipeline (a source, a sink, the error store, a table), as
/// announced by `component_register`. Its series go through `component_count` and
/// `component_gauge`, keyed by its id.
#[derive(Debug, Clone, Copy)]
pub struct ComponentInfo<'a> {
    /// Small integer id carried by `component_count` and `component_gauge`; unique among
    /// components.
    pub id: u32,
    /// Its name, exported as the label named after its kind (`source`, `table`, …).
    pub name: &'a str,
    /// What it is.
    pub kind: ComponentKind,
    /// Its Connector (sources, sinks) or TableKind (tables) code, else 0.
    pub variant: u32,
    /// The stream it reads or writes, `abi::NONE` if none.
    pub stream: u32,
    /// The query it belongs to, `abi::NONE` if none.
    pub query: u32,
}

struct Component {
    id: u32,
    name: CString,
    kind: u32,
    variant: u32,
    stream: u32,
    query: u32,
}

struct Stream {
    id: u32,
    name: CString,
    role: u32,
    junction: u32,
    capacity: u64,
}

struct Query {
    id: u32,
    name: CString,
    input_stream: u32,
    output_stream: u32,
    window: u32,
    window_size: u64,
}

struct Registry {
    streams: Vec<Stream>,
    queries: Vec<Query>,
    /// (query, stream): the other streams queries read.
    inputs: Vec<(u32, u32)>,
    components: Vec<Component>,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { streams: Vec::new(), queries: Vec::new(), inputs: Vec::new(), components: Vec::new() });

/// Sum of the registration probes' semaphores when the table was last announced.
#[cfg(feature = "enabled")]
static ANNOUNCED_TO: AtomicU32 = AtomicU32::new(0);

fn c_name(name: &str) -> CString {
    // Tracers read names with str(argN), which stops at the first NUL.
    CString::new(name.replace('\0', "?")).unwrap_or_default()
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves the table consistent (pushes are atomic), so a
    // poisoned lock is still usable; observability must never take the engine down.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stream {
    fn fire(&self) {
        crate::points::stream_register::site(
            self.id,
            self.name.as_ptr().cast(),
            self.role,
            self.junction,
            self.capacity,
        );
    }
}

impl Query {
    fn fire(&self) {
        crate::points::query_register::site(
            self.id,
            self.name.as_ptr().cast(),
            self.input_stream,
            self.output_stream,
            self.window,
            self.window_size,
        );
    }
}

impl Component {
    fn fire(&self) {
        crate::points::component_register::site(
            self.id,
            self.name.as_ptr().cast(),
            self.kind,
            self.variant,
            self.stream,
            self.query,
        );
    }
}

/// Registers a stream: fires `stream_register` now and again for every later observer.
pub fn register_stream(info: StreamInfo<'_>) {
    let mut reg = lock();
    reg.streams.retain(|s| s.id != info.id);
    reg.streams.push(Stream {
        id: info.id,
        name: c_name(info.name),
        role: info.role.code(),
        junction: info.junction.code(),
        capacity: info.capacity,
    });
    announce(&reg, || reg.streams.last().into_iter().for_each(Stream::fire));
}

/// Registers a query: fires `query_register` now and again for every later observer.
pub fn register_query(info: QueryInfo<'_>) {
    let mut reg = lock();
    reg.queries.retain(|q| q.id != info.id);
    reg.queries.push(Query {
        id: info.id,
        name: c_name(info.name),
        input_stream: info.input_stream,
        output_stream: info.output_stream,
        window: info.window.code(),
        window_size: info.window_size,
    });
    announce(&reg, || reg.queries.last().into_iter().for_each(Query::fire));
}

/// Registers another stream query `query_id` reads, besides its [`QueryInfo::input_stream`]
/// (a join's other side, a pattern's other streams): fires `query_input` now and again for
/// every later observer, after the query's registration. Register the query first.
pub fn register_query_input(query_id: u32, stream_id: u32) {
    let mut reg = lock();
    if !reg.inputs.contains(&(query_id, stream_id)) {
        reg.inputs.push((query_id, stream_id));
    }
    announce(&reg, || crate::points::query_input::site(query_id, stream_id));
}

/// Registers a component: fires `component_register` now and again for every later
/// observer.
pub fn register_component(info: ComponentInfo<'_>) {
    let mut reg = lock();
    reg.components.retain(|c| c.id != info.id);
    reg.components.push(Component {
        id: info.id,
        name: c_name(info.name),
        kind: info.kind.code(),
        variant: info.variant,
        stream: info.stream,
        query: info.query,
    });
    announce(&reg, || reg.components.last().into_iter().for_each(Component::fire));
}

/// Stops announcing a component and fires `component_unregister`;
/// [`crate::unregister_component`] flushes every count first.
pub(crate) fn forget_component(id: u32) {
    let mut reg = lock();
    reg.components.retain(|c| c.id != id);
    crate::points::component_unregister::site(id);
}

/// Stops announcing a query and fires `query_unregister`; [`crate::unregister_query`] flushes
/// every count first.
pub(crate) fn forget_query(id: u32) {
    let mut reg = lock();
    reg.queries.retain(|q| q.id != id);
    reg.inputs.retain(|(q, _)| *q != id);
    crate::points::query_unregister::site(id);
}

/// Fires the newest registration. Observers that arrived since the last replay get the whole
/// table from the flusher once their attach settled (`sync_observers`), this one included.
fn announce(reg: &Registry, fire_newest: impl FnOnce()) {
    let _ = reg;
    // Firing a detached site executes a nop, so no semaphore test is needed on this cold path.
    fire_newest();
}

#[cfg(feature = "enabled")]
fn replay(reg: &Registry) {
    reg.streams.iter().for_each(Stream::fire);
    reg.queries.iter().for_each(Query::fire);
    reg.inputs.iter().for_each(|&(query, stream)| crate::points::query_input::site(query, stream));
    reg.components.iter().for_each(Component::fire);
}

#[cfg(feature = "enabled")]
fn observers() -> u32 {
    u32::from(crate::points::stream_register::SEMAPHORE.count())
        + u32::from(crate::points::query_register::SEMAPHORE.count())
        + u32::from(crate::points::component_register::SEMAPHORE.count())
}

/// Whether the tools attached to the registration probes changed since the last replay.
pub(crate) fn observers_changed() -> bool {
    #[cfg(feature = "enabled")]
    return observers() != ANNOUNCED_TO.load(Ordering::Relaxed);
    #[cfg(not(feature = "enabled"))]
    return false;
}

/// Replays the table if the tools attached to the registration probes changed, once the change
/// has settled (a new tool's semaphore rises before its program is linked: see
/// `semaphore::SETTLE`), and when `refresh` asks for it while tools are attached (a tool that
/// joins another moves no count: see `flusher::REFRESH`). Called by the flusher once per
/// interval.
pub(crate) fn sync_observers(refresh: bool) {
    #[cfg(not(feature = "enabled"))]
    let _ = refresh;
    #[cfg(feature = "enabled")]
    {
        static CHANGED: Mutex<Option<(u32, std::time::Instant)>> = Mutex::new(None);
        let now = observers();
        let mut changed = CHANGED.lock().unwrap_or_else(|e| e.into_inner());
        if now == ANNOUNCED_TO.load(Ordering::Relaxed) {
            *changed = None;
            if refresh && now > 0 {
                replay(&lock());
            }
            return;
        }
        match *changed {
            Some((seen, since)) if seen == now && since.elapsed() >= crate::semaphore::SETTLE => {
                *changed = None;
                let reg = lock();
                ANNOUNCED_TO.store(now, Ordering::Relaxed);
                replay(&reg);
            }
            Some((seen, _)) if seen == now => {}
            _ => *changed = Some((now, std::time::Instant::now())),
        }
    }
}
