//! The container's first process: plan in the parent ([`plan`]), run in the child ([`run`]).

pub mod mount_opts;
pub mod plan;
mod run;

pub use plan::{build, FsOp, InitPlan, PlanError, PlanInputs};
pub use run::{run, run_exec, Failure, Step};
