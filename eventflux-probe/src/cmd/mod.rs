mod flags;
pub mod latency;
pub mod list;
pub mod node;
pub mod profile;
pub mod run;
pub mod top;
pub mod trace;
