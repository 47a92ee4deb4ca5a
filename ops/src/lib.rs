#![doc = include_str!("../README.md")]

pub mod import;
pub mod rebuild;
pub mod reconcile;
pub mod streams;
