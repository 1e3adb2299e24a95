//! Every probe of the `eventflux` provider, generated from the ABI table
//! (`eventflux_abi::for_each_probe!`): one module per probe with its semaphore and its site, and
//! the engine-facing API its class calls for — a [`Counter`](ingest::Counter) for count probes,
//! a [`Gauge`](window_state::Gauge) for gauge probes. Sample probes are fired by
//! [`crate::span`], registration probes by [`crate::register_stream`] and friends, and control
//! probes never fire.

pub use eventflux_abi::PROBES;

use crate::Semaphore;

macro_rules! arg_type {
    (u32) => { u32 };
    (u64) => { u64 };
    (str) => { *const u8 };
}

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
        static INFO: crate::accum::ProbeInfo = crate::accum::ProbeInfo {
            id: ID,
            gauge: matches!(CLASS, eventflux_abi::Class::Gauge),
            values: { let values: &[&str] = &[$(stringify!($val)),*]; values.len() },
            semaphore: &SEMAPHORE,
            fire: fire_series,
        };

        /// Fires the site for one series: keys, then amounts or values.
        fn fire_series(__keys: &[u32; crate::accum::MAX_KEYS], __values: &[u64; crate::accum::MAX_VALUES]) {
            let [$($key,)* ..] = *__keys;
            let [$($val,)* ..] = *__values;
            site($($key,)* $($val),*);
        }
    };
    ($class:ident, $name:ident; $($key:ident),*; $($val:ident),*) => {};
}

/// Calls a control probe's site from code that never runs, so that the linker keeps it (and
/// its note) although the engine never fires it.
macro_rules! keep_control {
    (control, $name:ident) => {
        $name::site();
    };
    ($class:ident, $name:ident) => {};
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
                #[allow(unused_imports)]
                use super::*;

                /// Index in the ABI table.
                pub const ID: u32 = eventflux_abi::probe::$name::ID;
                /// How this probe fires.
                pub const CLASS: eventflux_abi::Class = eventflux_abi::probe::$name::CLASS;

                /// This probe's USDT semaphore: non-zero while a tool is attached.
                #[cfg_attr(feature = "enabled", unsafe(link_section = ".probes"))]
                #[cfg_attr(feature = "enabled", unsafe(export_name = concat!("eventflux_", stringify!($name), "_semaphore")))]
                pub static SEMAPHORE: Semaphore = Semaphore::new();

                /// Whether a tool is attached to this probe.
                #[inline(always)]
                pub fn is_enabled() -> bool {
                    cfg!(feature = "enabled") && SEMAPHORE.is_active()
                }

                /// The probe site itself: a `nop` and its note. One function per probe, so a
                /// probe has one site whatever the number of callers (unless the compiler
                /// duplicates it inside this function), and the note is discarded together
                /// with the function when a binary never fires the probe.
                #[inline(never)]
                #[allow(clippy::too_many_arguments)]
                pub fn site($($key: arg_type!($kty),)* $($val: arg_type!($vty)),*) {
                    #[cfg(all(feature = "enabled", target_arch = "x86_64", target_os = "linux"))]
                    crate::__sdt_site!($name, $($key : $kty,)* $($val : $vty),*);
                    #[cfg(not(all(feature = "enabled", target_arch = "x86_64", target_os = "linux")))]
                    let _ = ($($key,)* $($val,)*);
                }

                class_api!($class, $name; $($key),*; $($val),*);
            }
        )*

        /// Every probe's semaphore, by probe id.
        pub(crate) static SEMAPHORES: [&Semaphore; eventflux_abi::probe::COUNT] = [$(&$name::SEMAPHORE),*];

        /// See [`keep_control`].
        pub(crate) fn keep_control_sites() {
            $(keep_control!($class, $name);)*
        }
    };
}

eventflux_abi::for_each_probe!(define_probes);
