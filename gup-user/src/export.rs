//! The exporters: what gupwatch writes out of a [`crate::collect::Reading`].
//!
//! * [`prometheus`]: the `/metrics` exposition (Prometheus 0.0.4 text or
//!   OpenMetrics).
//! * [`api`]: the JSON documents of `/api/snapshot`, which the live view
//!   reads too.
//! * [`process`]: the standard `process_*` self-metrics, part of the
//!   exposition.
//!
//! The HTTP server that serves them is [`crate::http`].

pub mod api;
pub mod process;
pub mod prometheus;
