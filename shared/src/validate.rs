//! The input limits and checks, defined once beside the contract (`stockflow_proto::validate`)
//! and re-exported here for the workers and tools that already reach them through `shared`.

pub use stockflow_proto::validate::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_list_the_same_beyond_stock_for_an_unlimited_backorder_policy() {
        let limit = crate::channels::UNLIMITED_BACKORDER_LISTED;
        assert!(
            crate::LUA_PRELUDE.contains(&format!("local UNLIMITED_BACKORDER_LISTED = {limit}\n")),
            "shared/src/lua/prelude.lua must define UNLIMITED_BACKORDER_LISTED = {limit}"
        );
    }

    #[test]
    fn the_scripts_use_the_same_level_limit() {
        assert!(
            crate::LUA_PRELUDE.contains(&format!("local MAX_LEVEL = {MAX_LEVEL}\n")),
            "shared/src/lua/prelude.lua must define MAX_LEVEL = {MAX_LEVEL}"
        );
    }
}
