//! Empty on the host: this package exists to be built for `bpfel-unknown-none` by aya-build
//! (see `src/main.rs`); the library target only lets it be a build-dependency.
#![no_std]
