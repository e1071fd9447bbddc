//! Other Delta implementations reading what sqlplan wrote: Python's `deltalake`
//! (its own delta-rs and DataFusion) and DuckDB's delta extension (the Delta
//! kernel's reader), each running a query over a table and a `vals` table.

use std::path::Path;

/// `query` over the table at `table` (as `t`) and `vals`, read by Python's `deltalake` (its own
/// delta-rs and DataFusion); None where it is not installed (outside CI).
pub fn python_lines(table: &Path, vals: &Path, query: &str) -> Option<Vec<String>> {
    if !crate::common::python_deltalake("from deltalake import QueryBuilder") {
        return None;
    }
    let script = "\
import sys, os
from deltalake import DeltaTable, QueryBuilder
q = QueryBuilder().register('t', DeltaTable(sys.argv[1])).register('vals', DeltaTable(sys.argv[2]))
import pyarrow as pa
for row in pa.table(q.execute(sys.argv[3]).read_all()).to_pylist():
    print(row['line'])
sys.stdout.flush()
os._exit(0)
";
    python(script, table, vals, query)
}

/// `query` read by DuckDB's delta extension (the Delta kernel's reader); None where
/// DuckDB or the extension is not installed, unless SQLPLAN_REQUIRE_DUCKDB is set.
pub fn duckdb_lines(table: &Path, vals: &Path, query: &str) -> Option<Vec<String>> {
    let probe = "import duckdb, duckdb_extension_delta";
    let ok = std::process::Command::new("python3")
        .args(["-c", probe])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("SQLPLAN_REQUIRE_DUCKDB").is_none(),
            "python3 with duckdb and duckdb-extension-delta is required here"
        );
        eprintln!("skipped: DuckDB's delta reader is not installed");
        return None;
    }
    // The extension ships in the wheel; loading it by path needs no network.
    let script = "\
import sys, os, glob, duckdb, duckdb_extension_delta
ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), \
    'extensions', '*', 'delta.duckdb_extension'))[0]
# No progress bar: a query that takes over two seconds would print one to stdout.
c = duckdb.connect()
c.execute('SET enable_progress_bar = false')
c.execute(f\"LOAD '{ext}'\")
c.execute(\"CREATE VIEW t AS SELECT * FROM delta_scan('\" + sys.argv[1] + \"')\")
c.execute(\"CREATE VIEW vals AS SELECT * FROM delta_scan('\" + sys.argv[2] + \"')\")
for (line,) in c.execute(sys.argv[3]).fetchall():
    print(line)
";
    python(script, table, vals, query)
}

fn python(script: &str, table: &Path, vals: &Path, query: &str) -> Option<Vec<String>> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            table.to_str().unwrap(),
            vals.to_str().unwrap(),
            query,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    Some(lines)
}
