//! `gateway`: HTTP/JSON front door: ingest facts and orders, query stock and orders.

use stockflow_shared::settings::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = gateway::Settings::from_env(&Env::process())?;
    settings.log.init();
    gateway::start(settings, stockflow_shared::shutdown_signal())
        .await?
        .wait()
        .await
}
