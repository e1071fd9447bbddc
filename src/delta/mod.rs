//! Delta tables: the one room that opens them. Locations and existence, schemas
//! between DataFusion and Delta, opening (at a version), creating and writing, and
//! what sqlplan records in commits (run, stage, start versions, state). Everything
//! above — state, render, compile, exec, fixtures, workloads — goes through here.

pub mod commit;
pub mod error;
pub mod failpoint;
pub mod keys;
pub mod location;
mod observe;
pub mod partition;
pub mod scan;
pub mod schema;
pub mod stores;
pub mod table;
pub mod vectors;
pub mod verify;
pub mod writer;

pub use commit::{app_id, finish_app_id, RunTag};
pub use error::Error;
pub use location::{local_table_exists, table_url};
pub use observe::Warehouse;
pub use table::{
    append_empty, bytes_added, create, open, open_if_exists, open_or_create, remove_all,
    writer_properties,
};
