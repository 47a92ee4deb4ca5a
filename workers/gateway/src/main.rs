//! `gateway`: HTTP/JSON front door: ingest facts and orders, query stock and orders.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("gateway is not built yet")
}
