#![doc = include_str!("../README.md")]

mod error;
pub mod history;
pub mod import;
pub mod rebuild;
pub mod reconcile;
pub mod streams;

pub use error::Error;
