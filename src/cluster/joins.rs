//! Broadcast hash joins on a cluster, where they give the right answer.
//!
//! Ballista runs each probe partition of a `CollectLeft` hash join in a task of
//! its own, each with the whole build side. A join that emits build rows by
//! what no probe row matched (LEFT, FULL, LEFT ANTI) or by what some did (LEFT
//! SEMI, LEFT MARK) then emits them once per task, each task knowing only its
//! own probe rows (apache/datafusion-ballista#1055; here, a MERGE's LEFT join
//! of its source lost half of it). An INNER or RIGHT join emits only rows its
//! probe rows matched and is right in any task. This rule, run by the
//! scheduler after DataFusion's own, turns only the former into partitioned
//! joins (both sides hashed by the keys), so the others keep their broadcast.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{JoinType, Result};
use datafusion::config::ConfigOptions;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};

/// See the module.
#[derive(Debug, Default)]
pub struct PartitionBuildSideJoins;

/// Whether a join's output depends on which build rows all probe rows matched.
fn needs_every_probe_row(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Left
            | JoinType::Full
            | JoinType::LeftAnti
            | JoinType::LeftSemi
            | JoinType::LeftMark
    )
}

impl PhysicalOptimizerRule for PartitionBuildSideJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let n = config.execution.target_partitions.max(1);
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if *join.partition_mode() != PartitionMode::CollectLeft
                || !needs_every_probe_row(*join.join_type())
            {
                return Ok(Transformed::no(node));
            }
            // The build side as it was before it was gathered into one partition.
            let left = match join.left().downcast_ref::<CoalescePartitionsExec>() {
                Some(gathered) => gathered.input().clone(),
                None => join.left().clone(),
            };
            let (left_keys, right_keys): (Vec<_>, Vec<_>) = join.on().iter().cloned().unzip();
            let left = Arc::new(RepartitionExec::try_new(
                left,
                Partitioning::Hash(left_keys, n),
            )?);
            let right = Arc::new(RepartitionExec::try_new(
                join.right().clone(),
                Partitioning::Hash(right_keys, n),
            )?);
            let partitioned = join
                .builder()
                .with_new_children(vec![left, right])?
                .with_partition_mode(PartitionMode::Partitioned)
                .reset_state()
                .recompute_properties()
                .build_exec()?;
            Ok(Transformed::yes(partitioned))
        })
        .data()
    }

    fn name(&self) -> &str {
        "partition_build_side_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::NullEquality;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::Column;

    fn collect_left(join_type: JoinType) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let side = || {
            let partitions = vec![Vec::new(), Vec::new()];
            MemorySourceConfig::try_new_exec(&partitions, schema.clone(), None).unwrap()
        };
        let key =
            || Arc::new(Column::new("k", 0)) as Arc<dyn datafusion::physical_expr::PhysicalExpr>;
        let join = HashJoinExec::try_new(
            Arc::new(CoalescePartitionsExec::new(side())),
            side(),
            vec![(key(), key())],
            None,
            &join_type,
            None,
            PartitionMode::CollectLeft,
            NullEquality::NullEqualsNothing,
            false,
        )
        .unwrap();
        Arc::new(join)
    }

    fn mode(plan: &Arc<dyn ExecutionPlan>) -> PartitionMode {
        *plan
            .downcast_ref::<HashJoinExec>()
            .unwrap()
            .partition_mode()
    }

    /// LEFT, FULL, semi and anti joins lose their broadcast (both sides hashed
    /// by the key); INNER and RIGHT joins keep it.
    #[test]
    fn only_joins_that_emit_build_rows_by_every_probe_task_are_partitioned() {
        let rule = PartitionBuildSideJoins;
        let config = ConfigOptions::default();
        for (join_type, expected) in [
            (JoinType::Left, PartitionMode::Partitioned),
            (JoinType::Full, PartitionMode::Partitioned),
            (JoinType::LeftAnti, PartitionMode::Partitioned),
            (JoinType::LeftSemi, PartitionMode::Partitioned),
            (JoinType::Inner, PartitionMode::CollectLeft),
            (JoinType::Right, PartitionMode::CollectLeft),
        ] {
            let plan = rule.optimize(collect_left(join_type), &config).unwrap();
            assert_eq!(mode(&plan), expected, "{join_type}");
            if expected == PartitionMode::Partitioned {
                for side in plan.children() {
                    assert!(
                        side.downcast_ref::<RepartitionExec>().is_some(),
                        "{join_type}"
                    );
                }
            }
        }
    }
}
