#![doc = include_str!("../README.md")]

pub mod ctl;
pub mod events;
pub mod out;
pub mod receiver;
pub mod render;

pub use stockflow_ops::streams::{
    last_sequence, read_after, wait_until_acked, wait_until_caught_up, wait_until_stock_caught_up,
};
pub use stockflow_shared::levels::{read_levels, LocationLevels};
