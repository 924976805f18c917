//! gupwatch's developer tasks, as a library so that every subcommand (and
//! future ones such as `bench`) reuses the same pieces: set-up, the kernel
//! matrix, the static build and the VM runner.

#![warn(missing_docs)]

pub mod util;

pub mod beyondstep;
pub mod bench;
pub mod binary;
pub mod canary;
pub mod debversion;
pub mod demo;
pub mod dist;
pub mod e2e;
pub mod faults;
pub mod fleet;
pub mod fuzz;
pub mod i915test;
pub mod hostile;
pub mod k8s;
pub mod livetest;
pub mod mmselftests;
pub mod preemptstep;
pub mod rdmastep;
pub mod reducedcheck;
pub mod rssguard;
pub mod setup;
pub mod stress;
pub mod testsuite;
pub mod vm;
