//! Profile writers: a [`Profile`] as folded stacks (what `inferno-flamegraph` and
//! `flamegraph.pl` read), as a flame graph SVG, or as a pprof protobuf.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::collect::stacks::Profile;

impl Profile {
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
    use std::time::Duration;

    use super::*;
    use crate::collect::stacks::{Frame, Place, Sample};

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
