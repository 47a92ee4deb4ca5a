#![doc = include_str!("../README.md")]

/// Version 1 of the contract. Breaking changes get a new package (`stockflow.v2`), not an edit.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/stockflow.v1.rs"));
}

pub mod input;
pub mod msg_id;
pub mod subjects;
pub mod validate;
