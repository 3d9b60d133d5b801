#![forbid(unsafe_code)]

pub mod call;
