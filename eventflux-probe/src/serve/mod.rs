//! Services: the observer as a library type ([`daemon::Daemon`]), the `run` service
//! ([`run`]), node mode ([`node`]), what the two services share ([`service`]) and the HTTP
//! server they both use ([`http`]).

pub mod daemon;
pub mod http;
pub mod node;
pub mod run;
mod service;

pub use service::bind;
