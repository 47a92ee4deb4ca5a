#![doc = include_str!("../README.md")]

pub mod rebuild;
pub mod reconcile;
pub mod streams;
