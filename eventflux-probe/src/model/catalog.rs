//! Names for the ids the probes carry, learned from the registration probes (`stream_register`,
//! `query_register`, `component_register` and their unregistrations) through the kernel's event
//! ring buffer, per process.

use std::collections::BTreeMap;

use eventflux_probe_common::{
    EVENT_COMPONENT, EVENT_COMPONENT_GONE, EVENT_QUERY, EVENT_QUERY_GONE, EVENT_STREAM, Event, NAME_LEN,
};

/// A stream as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    pub name: String,
    pub role: u32,
    pub junction: u32,
    pub capacity: u64,
}

/// A query as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMeta {
    pub name: String,
    pub input_stream: u32,
    pub output_stream: u32,
    pub window: u32,
    pub window_size: u64,
    /// False once `query_unregister` fired.
    pub active: bool,
}

/// A component as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentMeta {
    pub name: String,
    /// `eventflux_abi::ComponentKind` code.
    pub kind: u32,
    pub variant: u32,
    /// `eventflux_abi::NONE` when it belongs to no stream (query).
    pub stream: u32,
    pub query: u32,
    /// False once `component_unregister` fired.
    pub active: bool,
}

/// Every process's streams, queries and components, keyed by (pid, id).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub streams: BTreeMap<(u32, u32), StreamMeta>,
    pub queries: BTreeMap<(u32, u32), QueryMeta>,
    pub components: BTreeMap<(u32, u32), ComponentMeta>,
}

fn name(bytes: &[u8; NAME_LEN]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Catalog {
    /// Applies one registration. Replays of known registrations change nothing.
    pub fn apply(&mut self, e: &Event) {
        match e.kind {
            EVENT_STREAM => {
                let meta = StreamMeta { name: name(&e.name), role: e.a, junction: e.b, capacity: e.d };
                self.streams.insert((e.pid, e.id), meta);
            }
            EVENT_QUERY => {
                let meta = QueryMeta {
                    name: name(&e.name),
                    input_stream: e.a,
                    output_stream: e.b,
                    window: e.c,
                    window_size: e.d,
                    active: true,
                };
                self.queries.insert((e.pid, e.id), meta);
            }
            EVENT_QUERY_GONE => {
                if let Some(q) = self.queries.get_mut(&(e.pid, e.id)) {
                    q.active = false;
                }
            }
            EVENT_COMPONENT => {
                let meta = ComponentMeta {
                    name: name(&e.name),
                    kind: e.a,
                    variant: e.b,
                    stream: e.c,
                    query: u32::try_from(e.d).unwrap_or(eventflux_abi::NONE),
                    active: true,
                };
                self.components.insert((e.pid, e.id), meta);
            }
            EVENT_COMPONENT_GONE => {
                if let Some(c) = self.components.get_mut(&(e.pid, e.id)) {
                    c.active = false;
                }
            }
            _ => {}
        }
    }

    /// Forgets every registration of a process (it is gone and its series with it).
    pub fn forget(&mut self, pid: u32) {
        self.streams.retain(|(p, _), _| *p != pid);
        self.queries.retain(|(p, _), _| *p != pid);
        self.components.retain(|(p, _), _| *p != pid);
    }

    /// The stream's name, or `stream<ID>` until its registration arrives.
    pub fn stream_name(&self, pid: u32, id: u32) -> String {
        self.streams.get(&(pid, id)).map_or_else(|| format!("stream{id}"), |s| s.name.clone())
    }

    /// The query's name, or `query<ID>` until its registration arrives.
    pub fn query_name(&self, pid: u32, id: u32) -> String {
        self.queries.get(&(pid, id)).map_or_else(|| format!("query{id}"), |q| q.name.clone())
    }
}
