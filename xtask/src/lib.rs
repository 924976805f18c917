//! gupwatch's developer tasks, as a library so that every subcommand (and
//! future ones such as `bench`) reuses the same pieces: set-up, the kernel
//! matrix, the static build and the VM runner.

#![warn(missing_docs)]

pub mod util;

pub mod bench;
pub mod binary;
pub mod canary;
pub mod debversion;
pub mod demo;
pub mod dist;
pub mod e2e;
pub mod faults;
pub mod fuzz;
pub mod i915test;
pub mod guesttools;
pub mod hostile;
pub mod initramfs;
pub mod kernels;
pub mod livetest;
pub mod mmselftests;
pub mod modules;
pub mod preemptstep;
pub mod qemu;
pub mod rdmastep;
pub mod reducedcheck;
pub mod rssguard;
pub mod setup;
pub mod stress;
pub mod testsuite;
