//! Table locations: URLs and whether a table exists there. Never creates anything.

use crate::delta::error::{Doing as _, Error, Result};
/// A table location as a URL: a URL as written, or a local path (relative paths
/// are taken from the working directory). Never creates anything.
pub fn table_url(location: &str) -> Result<url::Url> {
    super::stores::register_schemes();
    if let Ok(url) = url::Url::parse(location) {
        if url.scheme().len() > 1 {
            return Ok(url);
        }
    }
    let path = std::path::absolute(location).doing(|| format!("invalid path `{location}`"))?;
    url::Url::from_directory_path(&path)
        .map_err(|_| Error::Location(format!("invalid path `{location}`")))
}

/// Whether the local directory holds a Delta table: a `_delta_log` with at least one
/// commit or checkpoint. A process killed while creating a table can leave the folder
/// without its first commit; that is no table yet, and the next run creates it.
pub fn local_table_exists(path: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir(path.join("_delta_log")) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let stem = name.split('.').next().unwrap_or("");
        stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && (name.ends_with(".json") || name.contains(".checkpoint"))
    })
}
