//! The partitioned stock input and ledger at R3: every node carries the partition mappings, each
//! partition stream is its own Raft group with its own leader, and one stock worker reads them all.

use std::collections::{BTreeMap, HashMap};

use stockflow_proto::{subjects, v1::StockChanged};
use stockflow_shared::topology;

use crate::world::*;

const PARTITIONS: usize = 3;

#[tokio::test]
async fn partitions_at_r3_apply_every_fact_and_report_their_leaders() {
    let world = ClusterWorld::start_partitioned(PARTITIONS).await;
    let worker = world.stock_worker();
    let skus: Vec<String> = (0..30).map(|i| format!("PT-{i}")).collect();
    let mut model: HashMap<&str, i64> = HashMap::new();
    for (i, sku) in skus.iter().enumerate() {
        for step in 0..2 {
            let quantity = (i + step + 1) as i64;
            world
                .publish(&event(
                    &format!("{sku}-{step}"),
                    sku,
                    "wh",
                    received(quantity),
                ))
                .await;
            *model.entry(sku).or_default() += quantity;
        }
    }
    world.wait_stock_idle().await;

    let mut leaders = BTreeMap::new();
    for spec in topology::stock_workers(&world.topology) {
        let mut stream = world.js.get_stream(spec.stream).await.expect("partition");
        let info = stream.info().await.expect("stream info");
        let cluster = info.cluster.clone().expect("clustered");
        let leader = cluster.leader.clone().expect("the partition has a leader");
        assert!(world.nats.index_of(&leader).is_some(), "{leader}");
        assert_eq!(info.config.num_replicas, 3);
        assert_eq!(cluster.replicas.len(), 2, "{}: two followers", spec.stream);
        assert!(info.state.messages > 0, "{} got facts", spec.stream);
        leaders.insert(spec.stream, leader);
    }
    // Placement is the meta leader's choice: printed, not asserted.
    println!("partition leaders: {leaders:?}");

    for sku in &skus {
        assert_eq!(
            world.on_hand_reserved(sku, "wh").await.0,
            model[sku.as_str()]
        );
    }
    // The ledger is partitioned the same way: STOCK_CHANGES_<p> at R3, one entry per fact, each
    // SKU's entries in one partition.
    assert!(world.js.get_stream(subjects::STOCK_CHANGES).await.is_err());
    let mut entries = 0;
    let mut ledger_partition_of: HashMap<String, String> = HashMap::new();
    for stream in topology::ledger_streams(&world.topology) {
        let info = world
            .js
            .get_stream(stream)
            .await
            .expect("ledger partition")
            .info()
            .await
            .expect("stream info")
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let cluster = info.cluster.clone().expect("clustered");
        assert!(cluster.leader.is_some(), "{stream} has a leader");
        assert_eq!(cluster.replicas.len(), 2, "{stream}: two followers");
        let ledger: Vec<StockChanged> = world.read(stream, "stock.changes.>").await;
        assert!(!ledger.is_empty(), "{stream} got entries");
        for entry in &ledger {
            let first = ledger_partition_of
                .entry(entry.sku.clone())
                .or_insert_with(|| stream.to_owned());
            assert_eq!(first, stream, "{} in one ledger partition", entry.sku);
        }
        entries += ledger.len();
    }
    assert_eq!(entries, skus.len() * 2, "one ledger entry per fact");
    worker.shutdown().await;
}
