//! The plan's graph faces: the stage DAG as Mermaid and DOT.

use std::fmt::Write as _;

use super::{Plan, StagePlan};

impl Plan {
    /// The stage DAG as a Mermaid flowchart; edges carry their hazards.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        for s in self.stages_in_program_order() {
            let _ = writeln!(out, "  {}[\"{}<br/>{}\"]", s.name, s.name, s.kind().label());
        }
        for s in self.stages_in_program_order() {
            for d in &s.depends_on {
                let _ = writeln!(
                    out,
                    "  {} -->|\"{}\"| {}",
                    d.stage,
                    d.reasons.join("; ").replace('"', "'"),
                    s.name
                );
            }
        }
        out
    }

    /// The stage DAG in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = format!(
            "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box];\n",
            self.pipeline
        );
        for s in self.stages_in_program_order() {
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\\n{}\"];",
                s.name,
                s.name,
                s.kind().label()
            );
        }
        for s in self.stages_in_program_order() {
            for d in &s.depends_on {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\" [label=\"{}\"];",
                    d.stage,
                    s.name,
                    d.reasons.join("; ").replace('"', "'")
                );
            }
        }
        out.push_str("}\n");
        out
    }

    fn stages_in_program_order(&self) -> Vec<&StagePlan> {
        let mut stages: Vec<&StagePlan> = self.stages.iter().collect();
        stages.sort_by_key(|s| s.index);
        stages
    }
}
