//! Every probe's point as tools see it, generated from the ABI table
//! (`eventflux_abi::for_each_probe!`): one module per probe with its semaphore and its site. The
//! engine-facing API around them ([`crate::probes`]) is apart because it starts the flusher,
//! while the flusher and the registry need the sites and semaphores: with both halves in one
//! module they would import each other.

use crate::semaphore::Semaphore;

macro_rules! arg_type {
    (u32) => { u32 };
    (u64) => { u64 };
    (str) => { *const u8 };
}

/// Calls a control probe's site from code that never runs, so that the linker keeps it (and
/// its note) although the engine never fires it.
macro_rules! keep_control {
    (control, $name:ident) => {
        $name::site();
    };
    ($class:ident, $name:ident) => {};
}

macro_rules! define_points {
    ($(
        $(#[$doc:meta])*
        $class:ident $name:ident ( $($key:ident : $kty:ident),* ; $($val:ident : $vty:ident),* $(,)? );
    )*) => {
        $(
            #[allow(non_snake_case)]
            pub mod $name {
                use crate::semaphore::Semaphore;

                /// Index in the ABI table.
                pub const ID: u32 = eventflux_abi::probe::$name::ID;
                /// How this probe fires.
                pub const CLASS: eventflux_abi::Class = eventflux_abi::probe::$name::CLASS;

                /// This probe's USDT semaphore: non-zero while a tool is attached.
                // Named `<provider>_<probe>_semaphore`, as `sys/sdt.h` names them; `concat!`
                // takes literals only, so the provider comes from the macro behind `PROVIDER`.
                #[cfg_attr(feature = "enabled", unsafe(link_section = ".probes"))]
                #[cfg_attr(feature = "enabled", unsafe(export_name = concat!(eventflux_abi::__abi_provider!(), "_", stringify!($name), "_semaphore")))]
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

eventflux_abi::for_each_probe!(define_points);
