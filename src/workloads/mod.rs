//! Workloads that ship with sqlplan, outside its core: the summary pipeline's data
//! generator, demo and benchmark.

pub mod summary;
