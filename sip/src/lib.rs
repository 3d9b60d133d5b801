#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod flow;
pub mod limit;
pub mod observe;
