//! The input limits and checks, defined once beside the contract (`stockflow_proto::validate`)
//! and re-exported here for the workers and tools that already reach them through `shared`.

pub use stockflow_proto::validate::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_use_the_same_level_limit() {
        assert!(
            crate::LUA_PRELUDE.contains(&format!("local MAX_LEVEL = {MAX_LEVEL}\n")),
            "shared/src/lua/prelude.lua must define MAX_LEVEL = {MAX_LEVEL}"
        );
    }
}
