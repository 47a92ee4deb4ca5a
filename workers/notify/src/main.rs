//! `notify-worker`: Delivers derived events to webhook subscriptions, signed, retried, dead-lettered.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("notify-worker is not built yet")
}
