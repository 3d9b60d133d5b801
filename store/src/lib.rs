//! The embedded store of sipedge. It is the only crate that knows the storage engines.
//!
//! - [`cdr`]: the call detail record model shared by call tracking, the store and the API.
#![forbid(unsafe_code)]

pub mod cdr;
