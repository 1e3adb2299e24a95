//! Services: the observer as a library type ([`daemon::Daemon`]), the `run` service
//! ([`run`]), node mode ([`node`]), `top` ([`top`], which runs either inside itself), what the two services share ([`service`], the trace
//! pipeline in [`traces`]) and the HTTP server they both use ([`http`]).

pub mod daemon;
pub mod http;
pub mod node;
pub mod run;
mod service;
pub mod top;
mod traces;

pub use service::bind;
