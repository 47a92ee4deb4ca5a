//! The setup step: idempotent, and it never silently rewrites what differs.

use stockflow_shared::topology::{self, Mode, TopologyError, TopologySettings};
use stockflow_tests::NatsServer;

#[tokio::test]
async fn setup_is_idempotent_and_reports_differences_until_updated() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let settings = TopologySettings::default();
    topology::ensure(&js, &settings, Mode::Verify)
        .await
        .expect("creates");
    topology::ensure(&js, &settings, Mode::Verify)
        .await
        .expect("idempotent");

    // Someone narrowed the stock stream's subjects by hand.
    let mut altered = topology::streams(&settings)
        .into_iter()
        .find(|s| s.name == "STOCK_EVENTS")
        .expect("declared");
    altered.subjects = vec!["stock.events.only-this".into()];
    js.update_stream(&altered).await.expect("altered");

    let err = topology::ensure(&js, &settings, Mode::Verify)
        .await
        .expect_err("differs");
    assert!(
        matches!(
            &err,
            TopologyError::Mismatch {
                setting: "subjects",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("stream STOCK_EVENTS"), "{err}");

    topology::ensure(&js, &settings, Mode::Update)
        .await
        .expect("updated");
    topology::ensure(&js, &settings, Mode::Verify)
        .await
        .expect("matches again");
    let info = js
        .get_stream("STOCK_EVENTS")
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.subjects, vec!["stock.events.>".to_owned()]);
}
