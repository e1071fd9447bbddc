//! The warehouse as planning sees it: every declared table's Delta log read once,
//! at its newest version. State, render and the catalog all use this one look
//! (they used to open each log separately, three times per plan).

use std::collections::BTreeMap;

use deltalake::DeltaTable;

use crate::delta::error::Result;

/// One table's location and what is there: a table, none yet, or an error.
struct Observation {
    location: String,
    found: Result<Option<DeltaTable>>,
}

/// The declared tables, observed once.
pub struct Warehouse {
    tables: BTreeMap<String, Observation>,
}

impl Warehouse {
    /// Reads the log of every table at its location (name → location). Never
    /// creates anything and reads no data file.
    pub async fn observe(locations: &BTreeMap<String, String>) -> Self {
        let mut tables = BTreeMap::new();
        for (name, location) in locations {
            let found = match super::table_url(location) {
                Ok(url) => super::open_if_exists(&url).await,
                Err(e) => Err(e),
            };
            tables.insert(
                name.clone(),
                Observation {
                    location: location.clone(),
                    found,
                },
            );
        }
        Warehouse { tables }
    }

    /// Where table `name` was observed, if it is declared.
    pub fn location(&self, name: &str) -> Option<&str> {
        self.tables.get(name).map(|o| o.location.as_str())
    }

    /// The declared tables' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// The table `name` at `location`: the observed one when the location is the
    /// one observed, else read now (a location that depends on a state variable).
    pub async fn table(&self, name: &str, location: &str) -> Result<Option<DeltaTable>> {
        match self.tables.get(name) {
            Some(o) if o.location == location => o.found.clone(),
            _ => super::open_if_exists(&super::table_url(location)?).await,
        }
    }

    /// Whether a table exists at `location` (an unreadable log counts as absent
    /// here; the catalog reports it).
    pub async fn exists(&self, name: &str, location: &str) -> bool {
        matches!(self.table(name, location).await, Ok(Some(_)))
    }
}
