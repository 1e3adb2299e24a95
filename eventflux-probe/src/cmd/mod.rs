pub mod latency;
pub mod list;
pub mod run;
mod target;
pub mod trace;
