//! Integration tests: one binary (every test binary links DataFusion again).
//! They drive the `sqlplan` CLI on temporary projects and warehouses.

mod cluster;
mod common;
mod crash;
mod diagnostics;
mod estimates;
mod expectations;
mod faults;
mod fixtures;
mod generate;
mod lsp;
mod macros;
mod merge;
mod partition_types;
mod plan_cli;
mod planning;
mod readers;
mod review;
mod run;
mod s3;
mod select;
mod store_faults;
mod summary_model;
mod summary_property;
mod trust;
mod vectors;
