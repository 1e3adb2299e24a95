pub mod latency;
pub mod list;
pub mod node;
pub mod profile;
pub mod run;
mod target;
pub mod trace;
