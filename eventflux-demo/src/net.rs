//! Two engine nodes over TCP: node A (`--forward ADDR`) sends every query's output rows to
//! node B (`--listen ADDR`), which takes them in as its input stream, as events forwarded
//! between EventFlux nodes. Each chunk carries the W3C trace context the engine hands on
//! (`usdt_markers::trace::current()` where A emits, `Batch::enter_in` where B processes), so
//! observers of both nodes export one connected trace.
//!
//! Wire format, per chunk (little-endian): event count `u32`, context length `u8` (0 or 55),
//! the `traceparent` text, then per event `ts_ms u64, symbol u32, 0u32, price i64, volume i64`.

use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use usdt_markers::abi::{ComponentCounter as CC, ComponentGauge as CG, ComponentKind, Connector, Direction};
use usdt_markers::trace::TraceContext;

use crate::components::Tally;
use crate::event::{Chunk, Event};

const EVENT_BYTES: usize = 32;
/// A chunk larger than this is a corrupt stream, not a chunk.
const MAX_CHUNK: u32 = 1 << 20;

/// Node A's side: the connection its queries' output goes to.
pub struct Forward {
    out: Mutex<(BufWriter<TcpStream>, u64)>,
    broken: AtomicBool,
    /// The transport as a component: what was sent, what failed.
    tally: Mutex<Tally>,
}

impl Forward {
    /// Connects to node B, retrying for up to 10 s (B may be starting too).
    pub fn connect(addr: SocketAddr) -> Result<Forward> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => bail!("cannot connect to node B at {addr}: {e} (start it with --listen {addr})"),
            }
        };
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let mut tally = transport(FORWARD_ID, "to_node_b");
        tally.set(CG::TransportPeers, 1);
        Ok(Forward {
            out: Mutex::new((BufWriter::new(stream), 0)),
            broken: AtomicBool::new(false),
            tally: Mutex::new(tally),
        })
    }

    /// What the transport did, for the summary; and its id.
    pub fn summary(&self) -> (u32, String, serde_json::Value) {
        let tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        (tally.id, tally.name.clone(), tally.summary())
    }

    /// Sends one query's output rows `(symbol, sum, count)` as events, with `context`. A
    /// failed send stops forwarding (reported once); what the node computes is unchanged.
    pub fn send(&self, rows: impl ExactSizeIterator<Item = (u32, i64, i64)>, context: Option<TraceContext>) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let (out, ts) = &mut *guard;
        let mut bytes = 0u64;
        let result = (|| -> std::io::Result<()> {
            bytes += 4 + 1 + EVENT_BYTES as u64 * rows.len() as u64;
            out.write_all(&(rows.len() as u32).to_le_bytes())?;
            match context {
                Some(c) => {
                    let text = c.to_string();
                    bytes += text.len() as u64;
                    out.write_all(&[text.len() as u8])?;
                    out.write_all(text.as_bytes())?;
                }
                None => out.write_all(&[0])?,
            }
            for (symbol, sum, count) in rows {
                let price = if count > 0 { sum / count } else { 0 };
                out.write_all(&ts.to_le_bytes())?;
                *ts += 1;
                out.write_all(&symbol.to_le_bytes())?;
                out.write_all(&0u32.to_le_bytes())?;
                out.write_all(&price.to_le_bytes())?;
                out.write_all(&count.to_le_bytes())?;
            }
            out.flush()
        })();
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                tally.add(CC::TransportMessages, Direction::Sent.code(), 1);
                tally.add(CC::TransportBytes, Direction::Sent.code(), bytes);
            }
            Err(e) => {
                tally.add(CC::TransportErrors, 0, 1);
                tally.set(CG::TransportPeers, 0);
                self.broken.store(true, Ordering::Relaxed);
                eprintln!("eventflux-demo: forwarding to node B failed, no longer forwarding: {e}");
            }
        }
    }

    /// Ends the stream: node B sees the end and finishes.
    pub fn finish(&self) {
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = guard.0.flush();
        let _ = guard.0.get_ref().shutdown(Shutdown::Write);
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).set(CG::TransportPeers, 0);
    }
}

/// Component ids of the two ends.
const FORWARD_ID: u32 = 7000;
const INBOUND_ID: u32 = 7001;

/// Registers one end of the transport between the two nodes (TCP).
fn transport(id: u32, name: &str) -> Tally {
    let labels = vec![("connector", Connector::Tcp.label().to_owned())];
    Tally::register(id, name.to_owned(), ComponentKind::Transport, Connector::Tcp.code(), None, labels)
}

/// Node B's side: one connection from node A.
pub struct Inbound {
    input: BufReader<TcpStream>,
    /// The transport as a component: what was received.
    pub tally: Tally,
}

impl Inbound {
    /// Listens on `addr` (port 0: any; the address is printed on stderr) and accepts one
    /// connection.
    pub fn accept(addr: SocketAddr) -> Result<Inbound> {
        let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("listening address")?;
        eprintln!("eventflux-demo: listening on {local}");
        let (stream, _) = listener.accept().context("accepting node A's connection")?;
        let mut tally = transport(INBOUND_ID, "from_node_a");
        tally.set(CG::TransportPeers, 1);
        Ok(Inbound { input: BufReader::new(stream), tally })
    }

    /// The next chunk and its trace context (a malformed one is ignored: a new trace); `None`
    /// when node A ended the stream.
    pub fn next(&mut self) -> Result<Option<(Chunk, Option<TraceContext>)>> {
        // The end of the stream is a clean end only between chunks.
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < len.len() {
            match self.input.read(&mut len[got..]) {
                Ok(0) if got == 0 => {
                    self.tally.set(CG::TransportPeers, 0);
                    return Ok(None);
                }
                Ok(0) => bail!("node A's stream ended inside a chunk header"),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading from node A"),
            }
        }
        let n = u32::from_le_bytes(len);
        if n > MAX_CHUNK {
            bail!("node A sent a chunk of {n} events: not an eventflux-demo stream");
        }
        let mut ctx_len = [0u8; 1];
        self.input.read_exact(&mut ctx_len).context("reading from node A")?;
        let mut ctx = vec![0u8; usize::from(ctx_len[0])];
        self.input.read_exact(&mut ctx).context("reading from node A")?;
        let context = std::str::from_utf8(&ctx).ok().and_then(TraceContext::parse);
        let mut buf = vec![0u8; n as usize * EVENT_BYTES];
        self.input.read_exact(&mut buf).context("reading from node A")?;
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let chunk = buf
            .chunks_exact(EVENT_BYTES)
            .map(|e| Event {
                ts_ms: word(&e[0..8]),
                symbol: u32::from_le_bytes(e[8..12].try_into().unwrap_or([0; 4])),
                price: word(&e[16..24]) as i64,
                volume: word(&e[24..32]) as i64,
            })
            .collect();
        self.tally.add(CC::TransportMessages, Direction::Received.code(), 1);
        let bytes = 4 + 1 + ctx.len() as u64 + buf.len() as u64;
        self.tally.add(CC::TransportBytes, Direction::Received.code(), bytes);
        Ok(Some((chunk, context)))
    }
}
