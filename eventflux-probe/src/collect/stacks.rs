//! Per-query CPU profiles: the CPU samples of one engine process with their stacks, each under
//! the query and stage its thread was executing (the CPU slot, `usdt_markers::cpu`), symbolized
//! with blazesym. `export::profile` writes them as folded stacks, pprof or a flame graph SVG.
//!
//! The kernel side counts samples by (process, query, state, user stack id, kernel stack id)
//! in `CPU_SAMPLES` and keeps the stacks in `STACKS` when loaded to profile
//! (`Kernel::load_profiling`). [`Profile::read`] turns that into [`Sample`]s of frame names,
//! outermost first; the writers (`export::profile`) only format a [`Profile`].
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
            Where::Idle(_) => Place { query: None, stage: "idle".into() },
            Where::Op(q, op) if q == eventflux_abi::NONE => Place { query: None, stage: op.span_name().into() },
            Where::Op(q, op) => Place { query: Some(name(q)), stage: op.span_name().into() },
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
