//! Per-query CPU profiles: the CPU samples of one engine process with their stacks, each under
//! the query and stage its thread was executing (the CPU slot, `usdt_markers::cpu`), symbolized
//! with blazesym and written as folded stacks, a pprof protobuf or a flame graph SVG.
//!
//! The kernel side counts samples by (process, query, state, user stack id, kernel stack id)
//! in `CPU_SAMPLES` and keeps the stacks in `STACKS` when loaded to profile
//! (`Kernel::load_profiling`). [`Profile::read`] turns that into [`Sample`]s of frame names,
//! outermost first; the writers only format a [`Profile`].
//!
//! Symbolization needs to know which file each address is in: from the live process (its
//! memory map) when it still runs, else from the [`Layout`] taken while it ran, whose files are
//! held open — a target that exits mid-profile still gets its samples written. User stacks
//! come from frame pointers; code built without them shows the frames up to the first function
//! that does not keep one (docs/cpu.md).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use blazesym::symbolize::source::{Elf, Kernel as KernelSource, Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use eventflux_abi::slot::{self, Where};

use crate::kernel::Kernel;
use crate::model::catalog::Catalog;

/// Where a sample's thread was: the query's name (`None`: outside any query) and the stage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub query: Option<String>,
    /// A Stage label, `other` (the query's own code), or `none` outside queries.
    pub stage: String,
}

impl Place {
    fn of(query: u32, state: u32, name: impl Fn(u32) -> String) -> Place {
        match slot::decode((u64::from(query) << 32) | u64::from(state)) {
            Where::None => Place { query: None, stage: "none".into() },
            Where::Query(q) => Place { query: Some(name(q)), stage: "other".into() },
            Where::Stage(q, s) => Place { query: Some(name(q)), stage: s.label().into() },
            Where::Unknown(q, s) => Place { query: Some(name(q)), stage: format!("unknown_{s}") },
        }
    }

    /// The `query_id` label: the query's name, or `none`.
    pub fn query_label(&self) -> &str {
        self.query.as_deref().unwrap_or("none")
    }
}

/// One frame of a stack.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frame {
    /// Demangled function name; `[unknown]` when no symbol covers the address.
    pub name: String,
    /// A kernel frame (shown with perf's `_[k]` suffix in folded stacks).
    pub kernel: bool,
    /// The address looked up (absolute in the process, or in the kernel; a return address
    /// less one, the call); inlined frames share their caller's.
    pub address: u64,
    /// Inlined into the frame before it (the same machine frame, one level of inlining in).
    pub inlined: bool,
}

/// Samples of one stack in one place.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub place: Place,
    /// Outermost first: user frames, then kernel frames (a sample in a system call).
    pub frames: Vec<Frame>,
    pub count: u64,
}

/// The profile of one process over one sampling period.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub pid: u32,
    /// CPU time one sample stands for.
    pub period: Duration,
    /// How long samples were taken.
    pub duration: Duration,
    /// When sampling started, in nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    pub samples: Vec<Sample>,
    /// Samples whose stacks could not be kept (the stack map was full, or their bucket taken):
    /// they appear without frames.
    pub stacks_lost: u64,
}

/// Which samples to keep.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A query name, or `none` for samples outside any query.
    pub query: Option<String>,
    /// A stage label (`filter`, `window`, …, `other`, `none`).
    pub stage: Option<String>,
}

impl Filter {
    pub fn keeps(&self, place: &Place) -> bool {
        self.query.as_deref().is_none_or(|q| q == place.query_label())
            && self.stage.as_deref().is_none_or(|s| s == place.stage)
    }
}

impl Profile {
    /// Process `pid`'s samples by place, stacks summed (no symbolization): what a filter can
    /// select.
    pub fn places(kernel: &Kernel, catalog: &Catalog, pid: u32) -> Result<BTreeMap<Place, u64>> {
        let mut out = BTreeMap::new();
        for ((place, _, _), n) in Self::counts(kernel, catalog, pid, &Filter::default())? {
            *out.entry(place).or_insert(0) += n;
        }
        Ok(out)
    }

    /// (place, user stack, kernel stack) → samples, of process `pid`, as `filter` selects.
    fn counts(
        kernel: &Kernel,
        catalog: &Catalog,
        pid: u32,
        filter: &Filter,
    ) -> Result<BTreeMap<(Place, i32, i32), u64>> {
        let name = |q: u32| catalog.query_name(pid, q);
        let mut counts = BTreeMap::new();
        for entry in kernel.cpu_samples()?.iter() {
            let (k, n) = entry.context("cannot read map CPU_SAMPLES")?;
            if k.pid != pid {
                continue;
            }
            let place = Place::of(k.query, k.state, name);
            if filter.keeps(&place) {
                *counts.entry((place, k.user_stack, k.kernel_stack)).or_insert(0) += n;
            }
        }
        Ok(counts)
    }

    /// Reads process `pid`'s samples and stacks from the kernel maps and symbolizes them: in the
    /// live process, or through `layout` once it exited (see the module docs). Query names come
    /// from `catalog`.
    pub fn read(
        kernel: &Kernel,
        catalog: &Catalog,
        pid: u32,
        filter: &Filter,
        layout: Option<&Layout>,
    ) -> Result<Profile> {
        let period = kernel.cpu_period().context("CPU sampling was not started")?;
        let counts = Self::counts(kernel, catalog, pid, filter)?;
        let stacks = kernel.stacks()?;
        let ips = |id: i32| -> Vec<u64> {
            // NO_STACK, or none to be had.
            if id < 0 {
                return Vec::new();
            }
            // A stack evicted meanwhile is shown as no stack, not an error.
            stacks.get(&(id as u32), 0).map(|s| s.frames().iter().map(|f| f.ip).collect()).unwrap_or_default()
        };
        let mut raw: Vec<(Place, Vec<u64>, Vec<u64>, u64)> = Vec::new();
        for ((place, user, kern), n) in counts {
            raw.push((place, ips(user), ips(kern), n));
        }
        let symbols = Symbols::resolve(pid, &raw, layout)?;
        let samples = raw
            .into_iter()
            .map(|(place, user, kern, count)| {
                let mut frames = Vec::new();
                // In a sample taken in the kernel the innermost user address is where the
                // system call returns to: a return address like the others.
                let in_kernel = !kern.is_empty();
                for (i, &ip) in user.iter().enumerate().rev() {
                    frames.extend(symbols.user(ip, i > 0 || in_kernel));
                }
                for (i, &ip) in kern.iter().enumerate().rev() {
                    frames.extend(symbols.kernel(ip, i > 0));
                }
                Sample { place, frames, count }
            })
            .collect();
        let stacks_lost = kernel.drops()?[eventflux_probe_common::drop::STACK_LOST as usize];
        Ok(Profile { pid, period, duration: Duration::ZERO, start_unix_ns: 0, samples, stacks_lost })
    }

    /// Samples in all.
    pub fn total(&self) -> u64 {
        self.samples.iter().map(|s| s.count).sum()
    }

    /// Folded stacks (one line per distinct stack: frames joined by `;`, a space, the count),
    /// as `inferno-flamegraph` and Brendan Gregg's `flamegraph.pl` read them. The query and
    /// the stage are the two outermost frames, so a flame graph splits by query first.
    pub fn folded(&self) -> String {
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        for s in &self.samples {
            let mut line = format!("{};{}", s.place.query_label().replace(';', ":"), s.place.stage);
            for f in &s.frames {
                line.push(';');
                line.push_str(&f.name.replace(';', ":"));
                if f.kernel {
                    line.push_str("_[k]");
                }
            }
            *lines.entry(line).or_insert(0) += s.count;
        }
        lines.into_iter().map(|(l, n)| format!("{l} {n}\n")).collect()
    }

    /// A flame graph of the folded stacks, as SVG.
    pub fn svg(&self, title: &str) -> Result<Vec<u8>> {
        let folded = self.folded();
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = title.to_owned();
        opts.count_name = "samples".into();
        opts.deterministic = true;
        let mut out = Vec::new();
        if folded.is_empty() {
            anyhow::bail!("no samples to draw: was the process on CPU, and does the filter match?");
        }
        inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut out).context("cannot draw the flame graph")?;
        Ok(out)
    }

    /// The profile as a pprof protobuf (`profile.proto` of google/pprof, uncompressed: pprof
    /// reads it as is; gzip it for tools that insist).
    pub fn pprof(&self) -> Vec<u8> {
        pprof::encode(self)
    }
}

/// Where a process's code came from, taken while it runs: its executable file mappings, each
/// file held open through `/proc/PID/map_files` (so a deleted file, or one inside a container,
/// is held too). Symbolizes the stacks of a process that exited before they were read.
#[derive(Debug)]
pub struct Layout {
    maps: Vec<(crate::find::usdt::process::Mapping, std::fs::File)>,
}

impl Layout {
    /// Process `pid`'s layout now. Mappings whose file cannot be opened are left out (their
    /// frames read `[unknown]` should the process exit).
    pub fn capture(pid: u32) -> Result<Layout> {
        let maps =
            crate::find::usdt::process::mappings(pid).with_context(|| format!("cannot read /proc/{pid}/maps"))?;
        let maps = maps
            .into_iter()
            .filter(|m| m.perms[2] == b'x' && m.path.starts_with('/'))
            .filter_map(|m| {
                let file = std::fs::File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)).ok()?;
                Some((m, file))
            })
            .collect();
        Ok(Layout { maps })
    }

    /// `addrs` grouped by the file they are in: a path to it this process can open, the
    /// addresses, and their file offsets. Addresses in no mapping are left out.
    fn locate(&self, addrs: &[u64]) -> Vec<(std::path::PathBuf, Vec<u64>, Vec<u64>)> {
        use std::os::fd::AsRawFd;
        let mut by_map: BTreeMap<usize, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
        for &a in addrs {
            if let Some(i) = self.maps.iter().position(|(m, _)| (m.start..m.end).contains(&a)) {
                let (keys, offsets) = by_map.entry(i).or_default();
                keys.push(a);
                offsets.push(a - self.maps[i].0.start + self.maps[i].0.offset);
            }
        }
        by_map
            .into_iter()
            .map(|(i, (keys, offsets))| (format!("/proc/self/fd/{}", self.maps[i].1.as_raw_fd()).into(), keys, offsets))
            .collect()
    }
}

/// Symbols of every address of a profile, looked up in one batch per source.
struct Symbols {
    user: HashMap<u64, Vec<String>>,
    kernel: HashMap<u64, Vec<String>>,
}

impl Symbols {
    /// Return addresses (every frame but the innermost) point after their call: the call is
    /// at `ip - 1`, which is what names the right (inlined) function.
    fn lookup_addr(ip: u64, is_return: bool) -> u64 {
        if is_return { ip.saturating_sub(1) } else { ip }
    }

    fn resolve(pid: u32, raw: &[(Place, Vec<u64>, Vec<u64>, u64)], layout: Option<&Layout>) -> Result<Symbols> {
        // Inlined functions need code information (DWARF) looked up as well.
        let symbolizer = Symbolizer::builder().enable_code_info(true).enable_inlined_fns(true).build();
        let mut user: Vec<u64> = Vec::new();
        let mut kernel: Vec<u64> = Vec::new();
        for (_, u, k, _) in raw {
            user.extend(u.iter().enumerate().map(|(i, &ip)| Self::lookup_addr(ip, i > 0)));
            kernel.extend(k.iter().enumerate().map(|(i, &ip)| Self::lookup_addr(ip, i > 0)));
        }
        for v in [&mut user, &mut kernel] {
            v.sort_unstable();
            v.dedup();
        }
        // `keys[i]` is the address `input`'s i-th entry stands for.
        let named = |src: &Source, input: Input<&[u64]>, keys: &[u64]| -> Result<HashMap<u64, Vec<String>>> {
            if keys.is_empty() {
                return Ok(HashMap::new());
            }
            let syms = symbolizer.symbolize(src, input)?;
            Ok(keys
                .iter()
                .zip(syms)
                .map(|(&a, s)| {
                    let names = match s {
                        // The function, then the functions inlined into it at this address.
                        Symbolized::Sym(sym) => std::iter::once(sym.name.to_string())
                            .chain(sym.inlined.iter().map(|f| f.name.to_string()))
                            .collect(),
                        Symbolized::Unknown(_) => vec!["[unknown]".to_owned()],
                    };
                    (a, names)
                })
                .collect())
        };
        let names = |src: &Source, addrs: &[u64]| named(src, Input::AbsAddr(addrs), addrs);
        let process = Source::Process(Process::new(pid.into()));
        let user = match (names(&process, &user), layout) {
            (Ok(user), _) => user,
            (Err(_), Some(layout)) => {
                let mut out = HashMap::new();
                for (path, addrs, offsets) in layout.locate(&user) {
                    let elf = Source::Elf(Elf::new(path));
                    // A file that cannot be read leaves its frames `[unknown]`.
                    out.extend(named(&elf, Input::FileOffset(&offsets), &addrs).unwrap_or_default());
                }
                out
            }
            (Err(e), None) => {
                return Err(e.context(format!("cannot symbolize process {pid}'s stacks (did it exit?)")));
            }
        };
        // Kernel symbols need /proc/kallsyms readable with addresses (root, or
        // kptr_restrict 0); without, kernel frames read `[unknown]`.
        let kernel = names(&Source::Kernel(KernelSource::default()), &kernel)
            .unwrap_or_else(|_| kernel.iter().map(|&a| (a, vec!["[unknown]".to_owned()])).collect());
        Ok(Symbols { user, kernel })
    }

    fn frames(map: &HashMap<u64, Vec<String>>, ip: u64, is_return: bool, kernel: bool) -> Vec<Frame> {
        let addr = Self::lookup_addr(ip, is_return);
        let names = map.get(&addr).cloned().unwrap_or_else(|| vec!["[unknown]".to_owned()]);
        names.into_iter().enumerate().map(|(i, name)| Frame { name, kernel, address: addr, inlined: i > 0 }).collect()
    }

    fn user(&self, ip: u64, is_return: bool) -> Vec<Frame> {
        Self::frames(&self.user, ip, is_return, false)
    }

    fn kernel(&self, ip: u64, is_return: bool) -> Vec<Frame> {
        Self::frames(&self.kernel, ip, is_return, true)
    }
}

/// The pprof format (`perftools.profiles.Profile`), the messages and fields this writer uses,
/// by their numbers in google/pprof's `proto/profile.proto`.
mod pprof {
    use std::collections::HashMap;

    use prost::Message;

    use super::Profile;

    #[derive(Clone, PartialEq, Message)]
    pub struct PProfile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Inlined functions first, the function they were inlined into last.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
    }

    #[derive(Default)]
    struct Strings {
        table: Vec<String>,
        index: HashMap<String, i64>,
    }

    impl Strings {
        fn id(&mut self, s: &str) -> i64 {
            if let Some(&i) = self.index.get(s) {
                return i;
            }
            let i = self.table.len() as i64;
            self.table.push(s.to_owned());
            self.index.insert(s.to_owned(), i);
            i
        }
    }

    pub fn encode(p: &Profile) -> Vec<u8> {
        let mut strings = Strings::default();
        // The format requires string_table[0] == "".
        strings.id("");
        let samples_t = ValueType { r#type: strings.id("samples"), unit: strings.id("count") };
        let cpu_t = ValueType { r#type: strings.id("cpu"), unit: strings.id("nanoseconds") };
        let (query_key, stage_key) = (strings.id("query_id"), strings.id("stage"));
        let mut functions: HashMap<String, u64> = HashMap::new();
        let mut function_list = Vec::new();
        // (address, kernel) → location; the frames of one address (a function and what was
        // inlined into it there) are one location.
        let mut locations: HashMap<(u64, bool), u64> = HashMap::new();
        let mut location_list: Vec<Location> = Vec::new();
        let period_ns = p.period.as_nanos() as i64;
        let mut samples = Vec::new();
        for s in &p.samples {
            let mut ids = Vec::new();
            let mut i = 0;
            while i < s.frames.len() {
                // A machine frame: a function and the frames inlined into it, outermost first.
                // One address always symbolizes alike, so it names the location.
                let (address, kernel) = (s.frames[i].address, s.frames[i].kernel);
                let mut j = i + 1;
                while j < s.frames.len() && s.frames[j].inlined {
                    j += 1;
                }
                let id = *locations.entry((address, kernel)).or_insert_with(|| {
                    let line = s.frames[i..j]
                        .iter()
                        .rev()
                        .map(|f| {
                            let name = if f.kernel { format!("{}_[k]", f.name) } else { f.name.clone() };
                            let function_id = *functions.entry(name.clone()).or_insert_with(|| {
                                let id = function_list.len() as u64 + 1;
                                let n = strings.id(&name);
                                function_list.push(Function { id, name: n, system_name: n });
                                id
                            });
                            Line { function_id }
                        })
                        .collect();
                    let id = location_list.len() as u64 + 1;
                    location_list.push(Location { id, address, line });
                    id
                });
                ids.push(id);
                i = j;
            }
            ids.reverse();
            let count = s.count as i64;
            samples.push(Sample {
                location_id: ids,
                value: vec![count, count.saturating_mul(period_ns)],
                label: vec![
                    Label { key: query_key, str: strings.id(s.place.query_label()) },
                    Label { key: stage_key, str: strings.id(&s.place.stage) },
                ],
            });
        }
        PProfile {
            sample_type: vec![samples_t, cpu_t.clone()],
            sample: samples,
            location: location_list,
            function: function_list,
            string_table: strings.table,
            time_nanos: p.start_unix_ns as i64,
            duration_nanos: p.duration.as_nanos() as i64,
            period_type: Some(cpu_t),
            period: period_ns,
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        let f = |name: &str, address: u64, kernel: bool| Frame { name: name.into(), kernel, address, inlined: false };
        let inl = |name: &str, address: u64| Frame { name: name.into(), kernel: false, address, inlined: true };
        let place = |q: Option<&str>, s: &str| Place { query: q.map(str::to_owned), stage: s.into() };
        Profile {
            pid: 1,
            period: Duration::from_millis(10),
            duration: Duration::from_secs(1),
            start_unix_ns: 0,
            stacks_lost: 0,
            samples: vec![
                Sample {
                    place: place(Some("q0"), "filter"),
                    frames: vec![f("main", 0x10, false), f("filter", 0x20, false), inl("score", 0x20)],
                    count: 3,
                },
                Sample {
                    place: place(None, "none"),
                    frames: vec![f("main", 0x10, false), f("write", 0x30, false), f("ksys_write", 0xff00, true)],
                    count: 1,
                },
            ],
        }
    }

    #[test]
    fn folded_stacks_start_with_query_and_stage() {
        assert_eq!(
            profile().folded(),
            "none;none;main;write;ksys_write_[k] 1\nq0;filter;main;filter;score 3\n",
            "sorted lines, kernel frames suffixed"
        );
    }

    #[test]
    fn pprof_shares_locations_and_keeps_inlined_frames_in_one() {
        use prost::Message;
        let bytes = profile().pprof();
        let p = pprof::PProfile::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.location.len(), 4, "main, filter+score, write, ksys_write");
        let inlined = p.location.iter().find(|l| l.address == 0x20).expect("location");
        let names: Vec<&str> = inlined
            .line
            .iter()
            .map(|l| p.string_table[p.function[l.function_id as usize - 1].name as usize].as_str())
            .collect();
        assert_eq!(names, ["score", "filter"], "inlined first, the function it is in last");
        assert_eq!(p.sample[0].value, vec![3, 30_000_000]);
        // Recursion at one call site: one location per machine frame, each used twice.
        let f = |address| Frame { name: "f".into(), kernel: false, address, inlined: false };
        let place = Place { query: None, stage: "none".into() };
        let rec =
            Profile { samples: vec![Sample { place, frames: vec![f(0x10), f(0x10), f(0x10)], count: 1 }], ..profile() };
        let p = pprof::PProfile::decode(rec.pprof().as_slice()).expect("decodes");
        assert_eq!(p.location.len(), 1);
        assert_eq!(p.location[0].line.len(), 1, "not merged into one location of three lines");
        assert_eq!(p.sample[0].location_id, vec![1, 1, 1]);
        assert_eq!(p.period, 10_000_000);
    }
}
