//! The exporters: what gupwatch writes out of a [`crate::collect::Reading`].
//!
//! * [`prometheus`]: the `/metrics` exposition (Prometheus 0.0.4 text or
//!   OpenMetrics).
//! * [`api`]: the JSON documents of `/api/snapshot`, which the live view
//!   reads too.
//! * [`process`]: the standard `process_*` self-metrics, part of the
//!   exposition.
//! * [`http`]: the HTTP server that serves them, with TLS and basic auth
//!   configured by [`webconfig`].
//! * [`client`]: the other end of the wire: `top --connect` and
//!   `leaks --connect` read a daemon's `/api/snapshot` through it.

pub mod api;
pub mod process;
pub mod prometheus;
pub mod client;
pub mod http;
pub mod webconfig;
