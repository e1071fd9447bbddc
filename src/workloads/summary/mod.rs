//! The summary pipeline's workload: a synthetic warehouse (`generate`), the demo
//! (`demo`) and the benchmark (`bench`).

pub mod args;
pub mod bench;
pub mod demo;
pub mod generate;
