//! `stockflow-bench`: see BENCHMARKS.md.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
