//! The dependency DAG (docs/design.md §2): edges from read-after-write, write-after-read
//! and write-after-write hazards in program order, plus explicit `after:` edges;
//! levels of stages that may run together; cycles with their whole path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use petgraph::graph::{DiGraph, NodeIndex};

/// What one stage touches, by object name (a table or a relation).
#[derive(Clone, Debug, Default)]
pub struct StageAccess {
    pub reads: BTreeSet<String>,
    /// Tables written and relations defined.
    pub writes: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hazard {
    /// The later stage reads what the earlier one writes or defines.
    ReadAfterWrite(String),
    /// The later stage writes what the earlier one reads.
    WriteAfterRead(String),
    /// Both write the same table: their commits keep program order.
    WriteAfterWrite(String),
    /// Declared with `after:`.
    Explicit,
    /// The earlier stage's `fail` checks must pass before any write.
    ChecksFirst,
}

impl fmt::Display for Hazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hazard::ReadAfterWrite(x) => write!(f, "reads {x} after it is written"),
            Hazard::WriteAfterRead(x) => write!(f, "writes {x} after it is read"),
            Hazard::WriteAfterWrite(x) => write!(f, "writes {x} after an earlier write"),
            Hazard::Explicit => write!(f, "declared with `after`"),
            Hazard::ChecksFirst => write!(f, "writes only after its checks pass"),
        }
    }
}

/// Edges `(from, to)` → hazards, over stages numbered in program order.
#[derive(Clone, Debug, Default)]
pub struct Dag {
    pub len: usize,
    pub edges: BTreeMap<(usize, usize), BTreeSet<Hazard>>,
}

impl Dag {
    /// Hazard edges between every pair of stages in program order.
    pub fn from_accesses(accesses: &[StageAccess]) -> Self {
        let mut dag = Dag {
            len: accesses.len(),
            edges: BTreeMap::new(),
        };
        for (j, later) in accesses.iter().enumerate() {
            for (i, earlier) in accesses[..j].iter().enumerate() {
                let mut hazards = BTreeSet::new();
                hazards.extend(
                    later
                        .reads
                        .intersection(&earlier.writes)
                        .map(|x| Hazard::ReadAfterWrite(x.clone())),
                );
                hazards.extend(
                    later
                        .writes
                        .intersection(&earlier.reads)
                        .map(|x| Hazard::WriteAfterRead(x.clone())),
                );
                hazards.extend(
                    later
                        .writes
                        .intersection(&earlier.writes)
                        .map(|x| Hazard::WriteAfterWrite(x.clone())),
                );
                if !hazards.is_empty() {
                    dag.edges.insert((i, j), hazards);
                }
            }
        }
        dag
    }

    /// `to` runs after `from`, whatever their program order.
    pub fn add_after(&mut self, from: usize, to: usize) {
        self.edges
            .entry((from, to))
            .or_default()
            .insert(Hazard::Explicit);
    }

    /// `to` writes, so it waits for the `fail` checks of `from` (earlier in order).
    pub fn add_checked_first(&mut self, from: usize, to: usize) {
        self.edges
            .entry((from, to))
            .or_default()
            .insert(Hazard::ChecksFirst);
    }

    pub fn predecessors(
        &self,
        node: usize,
    ) -> impl Iterator<Item = (usize, &BTreeSet<Hazard>)> + '_ {
        self.edges
            .iter()
            .filter(move |((_, to), _)| *to == node)
            .map(|((from, _), h)| (*from, h))
    }

    /// The level of each stage (longest path from a source), or a cycle as the list
    /// of stages along it, starting and ending at the same stage.
    pub fn levels(&self) -> Result<Vec<usize>, Vec<usize>> {
        let mut graph: DiGraph<usize, ()> = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..self.len).map(|i| graph.add_node(i)).collect();
        for &(from, to) in self.edges.keys() {
            graph.add_edge(nodes[from], nodes[to], ());
        }
        let order = petgraph::algo::toposort(&graph, None)
            .map_err(|cycle| self.cycle_through(cycle.node_id().index()))?;
        let mut level = vec![0; self.len];
        for n in order {
            let i = n.index();
            level[i] = self
                .predecessors(i)
                .map(|(p, _)| level[p] + 1)
                .max()
                .unwrap_or(0);
        }
        Ok(level)
    }

    /// A shortest cycle through `start` (breadth-first over successors).
    fn cycle_through(&self, start: usize) -> Vec<usize> {
        let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            for &(from, to) in self.edges.keys() {
                if from != n {
                    continue;
                }
                if to == start {
                    let mut path = vec![start, n];
                    let mut cur = n;
                    while cur != start {
                        cur = parent[&cur];
                        path.push(cur);
                    }
                    path.reverse();
                    path.dedup();
                    return rotate_to_smallest(path);
                }
                if to != start && !parent.contains_key(&to) {
                    parent.insert(to, n);
                    queue.push_back(to);
                }
            }
        }
        vec![start, start]
    }
}

/// A closed path `[a, b, …, a]`, rotated to start at its smallest stage so that the
/// report does not depend on where the search found the cycle.
fn rotate_to_smallest(mut path: Vec<usize>) -> Vec<usize> {
    if path.len() > 1 && path.first() == path.last() {
        path.pop();
    }
    let min_at = path
        .iter()
        .enumerate()
        .min_by_key(|(_, n)| **n)
        .map_or(0, |(i, _)| i);
    path.rotate_left(min_at);
    path.push(path[0]);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(reads: &[&str], writes: &[&str]) -> StageAccess {
        StageAccess {
            reads: reads.iter().map(|s| s.to_string()).collect(),
            writes: writes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn read_after_write_orders_reader_after_writer() {
        let dag = Dag::from_accesses(&[access(&[], &["t"]), access(&["t"], &[])]);
        assert_eq!(
            dag.edges[&(0, 1)],
            BTreeSet::from([Hazard::ReadAfterWrite("t".into())])
        );
        assert_eq!(dag.levels().unwrap(), vec![0, 1]);
    }

    #[test]
    fn write_after_read_orders_writer_after_reader() {
        let dag = Dag::from_accesses(&[access(&["t"], &["r"]), access(&["s"], &["t"])]);
        assert_eq!(
            dag.edges[&(0, 1)],
            BTreeSet::from([Hazard::WriteAfterRead("t".into())])
        );
    }

    #[test]
    fn write_after_write_keeps_commit_order() {
        let dag = Dag::from_accesses(&[access(&["a"], &["t"]), access(&["b"], &["t"])]);
        assert_eq!(
            dag.edges[&(0, 1)],
            BTreeSet::from([Hazard::WriteAfterWrite("t".into())])
        );
    }

    #[test]
    fn reads_alone_make_no_edge_and_share_a_level() {
        let dag = Dag::from_accesses(&[
            access(&["t"], &["x"]),
            access(&["t"], &["y"]),
            access(&["x", "y"], &["z"]),
        ]);
        assert!(!dag.edges.contains_key(&(0, 1)));
        assert_eq!(dag.levels().unwrap(), vec![0, 0, 1]);
    }

    #[test]
    fn levels_are_longest_paths() {
        // 0 → 1 → 2 and 0 → 2: stage 2 sits at level 2, not 1.
        let dag = Dag::from_accesses(&[
            access(&[], &["a"]),
            access(&["a"], &["b"]),
            access(&["a", "b"], &["c"]),
        ]);
        assert_eq!(dag.levels().unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn explicit_after_can_point_forward_and_close_a_cycle() {
        let mut dag = Dag::from_accesses(&[
            access(&[], &["a"]),
            access(&["a"], &["b"]),
            access(&["b"], &["c"]),
        ]);
        dag.add_after(2, 0); // stage 0 `after: [stage 2]`
        assert_eq!(dag.levels().unwrap_err(), vec![0, 1, 2, 0]);
    }

    #[test]
    fn a_stage_after_itself_is_a_cycle_of_one() {
        let mut dag = Dag::from_accesses(&[access(&[], &["a"])]);
        dag.add_after(0, 0);
        assert_eq!(dag.levels().unwrap_err(), vec![0, 0]);
    }
}
