//! The `gantry` operator CLI: commands against a coordinator's operator API,
//! and `gantry demo`, which runs a whole Gantry in one process.

pub mod commands;
pub mod demo;
pub mod failover;
pub mod follow;
pub mod jre_image;
pub mod login;
pub mod output;
pub mod releases;
pub mod sample;
pub mod trust;
