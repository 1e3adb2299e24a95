//! Names for the ids the probes carry, learned from the registration probes (`stream_register`,
//! `query_register`, `component_register` and their unregistrations) through the kernel's event
//! ring buffer, per process.

use std::collections::{BTreeMap, BTreeSet};

use eventflux_probe_common::{
    EVENT_COMPONENT, EVENT_COMPONENT_GONE, EVENT_QUERY, EVENT_QUERY_GONE, EVENT_QUERY_INPUT, EVENT_STREAM, Event,
    NAME_LEN,
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
    /// The streams a query reads besides its registered input (`query_input`).
    pub inputs: BTreeMap<(u32, u32), BTreeSet<u32>>,
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
                    name: self.query_label(e.pid, e.id, name(&e.name), e.b),
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
            EVENT_QUERY_INPUT => {
                self.inputs.entry((e.pid, e.id)).or_default().insert(e.a);
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

    /// The name a query is exported by: the one it registered, or for a query the engine left
    /// unnamed (an SQL statement without `@info(name=…)`), `into_` and its output stream, so
    /// that a dashboard row says what the query feeds (`into_<stream>_<id>` when another
    /// query of the process already has that name; `query<id>` while the stream is unknown).
    fn query_label(&self, pid: u32, id: u32, registered: String, output: u32) -> String {
        if !registered.is_empty() {
            return registered;
        }
        let Some(stream) = self.streams.get(&(pid, output)) else { return format!("query{id}") };
        let name = format!("into_{}", stream.name);
        let taken = self.queries.iter().any(|(&(p, q), meta)| p == pid && q != id && meta.name == name);
        if taken { format!("{name}_{id}") } else { name }
    }

    /// Forgets every registration of a process (it is gone and its series with it).
    pub fn forget(&mut self, pid: u32) {
        self.streams.retain(|(p, _), _| *p != pid);
        self.queries.retain(|(p, _), _| *p != pid);
        self.inputs.retain(|(p, _), _| *p != pid);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u32, id: u32, name: &str, b: u32) -> Event {
        let mut bytes = [0u8; NAME_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Event { kind, pid: 7, id, a: 0, b, c: 0, d: 0, name: bytes }
    }

    #[test]
    fn an_unnamed_query_is_named_after_the_stream_it_feeds() {
        let mut c = Catalog::default();
        c.apply(&event(EVENT_QUERY, 0, "", 9));
        assert_eq!(c.query_name(7, 0), "query0", "its output stream is not known yet");
        c.apply(&event(EVENT_STREAM, 9, "Alerts", 0));
        for (id, want) in [(0, "into_Alerts"), (1, "into_Alerts_1"), (2, "big_trades")] {
            c.apply(&event(EVENT_QUERY, id, if id == 2 { "big_trades" } else { "" }, 9));
            assert_eq!(c.query_name(7, id), want);
        }
        // A replay keeps the name it had.
        c.apply(&event(EVENT_QUERY, 0, "", 9));
        assert_eq!(c.query_name(7, 0), "into_Alerts");
    }
}
