//! The SQL functions, grouped by what a DBA does with them. Views and
//! grants are in `sql/*.sql`.
mod admin;
mod backups;
mod gc;
mod load;
mod offload;
mod relations;
mod reoffload;
mod status;
