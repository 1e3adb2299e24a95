//! Every probe of the `eventflux` provider, generated from the ABI table
//! (`eventflux_abi::for_each_probe!`): one module per probe with its semaphore and its site
//! ([`crate::points`]), and the engine-facing API its class calls for — a
//! [`Counter`](ingest::Counter) for count probes, a [`Gauge`](window_state::Gauge) for gauge
//! probes. Sample probes are fired by [`crate::span`], registration probes by
//! [`crate::register_stream`] and friends, and control probes never fire.

pub use eventflux_abi::PROBES;

/// The engine-facing API of a probe, by class.
macro_rules! class_api {
    (count, $name:ident; $($key:ident),*; $($val:ident),*) => {
        /// A series of this probe (its key arguments fixed): amounts added here reach observers
        /// summed, at most once per flush interval. Create it once (per stream, per query), not
        /// per chunk; creating the same series again gives the same counter.
        #[derive(Debug, Clone, Copy)]
        pub struct Counter(crate::accum::Handle);

        #[allow(clippy::new_without_default)]
        impl Counter {
            /// The series with these key arguments.
            pub fn new($($key: u32),*) -> Counter {
                Counter(crate::accum::Handle::new(&INFO, &[$($key),*]))
            }

            /// Adds to the series. Detached: one load and a branch. Attached: a few adds into
            /// this thread's own cells; nothing traps.
            #[inline(always)]
            pub fn add(&self, $($val: u64),*) {
                if is_enabled() {
                    self.0.add(&[$($val),*]);
                }
            }
        }

        class_api!(@info $name; $($key),*; $($val),*);
    };
    (gauge, $name:ident; $($key:ident),*; $($val:ident),*) => {
        /// A series of this probe (its key arguments fixed): the last value set here reaches
        /// observers at most once per flush interval, when it changed. Create it once.
        #[derive(Debug, Clone, Copy)]
        pub struct Gauge(crate::accum::Handle);

        #[allow(clippy::new_without_default)]
        impl Gauge {
            /// The series with these key arguments.
            pub fn new($($key: u32),*) -> Gauge {
                Gauge(crate::accum::Handle::new(&INFO, &[$($key),*]))
            }

            /// Sets the series' values: plain stores, attached or not (so that an observer
            /// attaching later is told the current value), and nothing else while detached.
            #[inline(always)]
            pub fn set(&self, $($val: u64),*) {
                self.0.set(&[$($val),*], is_enabled());
            }
        }

        class_api!(@info $name; $($key),*; $($val),*);
    };
    (@info $name:ident; $($key:ident),*; $($val:ident),*) => {
        static INFO: crate::cells::ProbeInfo = crate::cells::ProbeInfo {
            id: ID,
            gauge: matches!(CLASS, eventflux_abi::Class::Gauge),
            values: { let values: &[&str] = &[$(stringify!($val)),*]; values.len() },
            fire: fire_series,
        };

        /// Fires the site for one series: keys, then amounts or values.
        fn fire_series(__keys: &[u32; crate::cells::MAX_KEYS], __values: &[u64; crate::cells::MAX_VALUES]) {
            let [$($key,)* ..] = *__keys;
            let [$($val,)* ..] = *__values;
            site($($key,)* $($val),*);
        }
    };
    ($class:ident, $name:ident; $($key:ident),*; $($val:ident),*) => {};
}

macro_rules! define_probes {
    ($(
        $(#[$doc:meta])*
        $class:ident $name:ident ( $($key:ident : $kty:ident),* ; $($val:ident : $vty:ident),* $(,)? );
    )*) => {
        $(
            $(#[$doc])*
            #[allow(non_snake_case)]
            pub mod $name {
                pub use crate::points::$name::{CLASS, ID, SEMAPHORE, is_enabled, site};

                class_api!($class, $name; $($key),*; $($val),*);
            }
        )*
    };
}

eventflux_abi::for_each_probe!(define_probes);

#[cfg(all(test, feature = "enabled"))]
mod tests {
    use std::sync::Mutex;

    use super::{error, ingest, window_state};
    use crate::flusher::{FIRED, flush};
    use crate::semaphore::{SETTLE, Semaphore};

    /// The tests share the process-wide registry and semaphores: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Raises a semaphore as an attaching tool would, and lets the change settle.
    fn attach(sem: &Semaphore, n: u16) {
        sem.set(n);
        flush();
        std::thread::sleep(SETTLE);
    }

    fn fired(probe: u32, key: u32) -> Vec<[u64; 4]> {
        let mut f = FIRED.lock().unwrap_or_else(|e| e.into_inner());
        let out = f.iter().filter(|(p, k, _)| *p == probe && k[0] == key).map(|(_, _, v)| *v).collect();
        f.retain(|(p, k, _)| !(*p == probe && k[0] == key));
        out
    }

    /// Amounts added on several threads, some of which exit before the flush and hand their
    /// block to later threads, reach the probe exactly once and in full.
    #[test]
    fn counts_from_many_threads_are_exact_across_flushes_and_thread_exits() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let counter = ingest::Counter::new(901);
        attach(&ingest::SEMAPHORE, 1);
        let mut total = 0u64;
        for round in 0..3u64 {
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    std::thread::spawn(move || {
                        for i in 0..1000u64 {
                            counter.add(i % 7 + t + round);
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().expect("thread"));
            total += (0..4u64).map(|t| (0..1000u64).map(|i| i % 7 + t + round).sum::<u64>()).sum::<u64>();
            flush();
        }
        let sum: u64 = fired(ingest::ID, 901).iter().map(|v| v[0]).sum();
        assert_eq!(sum, total);
        // Nothing new: nothing fires.
        flush();
        assert!(fired(ingest::ID, 901).is_empty());
        ingest::SEMAPHORE.set(0);
    }

    /// While nobody observes the probe, adds are dropped; what was added before the last
    /// observer left does not reach the next one.
    #[test]
    fn an_observer_counts_from_its_attach() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let counter = error::Counter::new(902, 1);
        attach(&error::SEMAPHORE, 1);
        counter.add(5);
        flush();
        assert_eq!(fired(error::ID, 902), vec![[5, 0, 0, 0]]);
        counter.add(7);
        error::SEMAPHORE.set(0);
        flush();
        counter.add(100);
        error::SEMAPHORE.set(1);
        counter.add(3);
        // Settling: nothing fires yet, nothing is lost.
        flush();
        assert!(fired(error::ID, 902).is_empty());
        counter.add(4);
        std::thread::sleep(SETTLE);
        flush();
        assert_eq!(fired(error::ID, 902), vec![[7, 0, 0, 0]]);
        error::SEMAPHORE.set(0);
    }

    /// Gauges fire when they change, and again to a newly attached observer.
    #[test]
    fn gauges_fire_on_change_and_to_new_observers() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = window_state::Gauge::new(903);
        attach(&window_state::SEMAPHORE, 1);
        gauge.set(10);
        flush();
        gauge.set(10);
        flush();
        assert_eq!(fired(window_state::ID, 903), vec![[10, 0, 0, 0]]);
        attach(&window_state::SEMAPHORE, 2);
        flush();
        assert_eq!(fired(window_state::ID, 903), vec![[10, 0, 0, 0]], "the second observer gets the value");
        window_state::SEMAPHORE.set(0);
    }
}
