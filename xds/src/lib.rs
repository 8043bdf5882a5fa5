//! Envoy v3 configuration for Strait: the bootstrap types, and the one translator from
//! them into Strait's validated, immutable model (`model::Snapshot`).
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod format;
pub mod model;
mod route;
pub mod translate;

pub use format::{parse_format, DEFAULT_ACCESS_LOG_FORMAT};
pub use translate::{quick_snapshot, snapshot_from_path, snapshot_from_yaml, ConfigError};
