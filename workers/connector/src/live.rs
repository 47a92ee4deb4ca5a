//! The connector's shops, followed live: the `CONNECTOR_SHOPS` and `CONNECTOR_ITEMS` buckets are
//! read at start and watched; a new shop starts its pipeline (consumers, pusher, webhook route), a
//! changed one restarts it, a removed one stops, and its durable consumers are deleted (see
//! [`Live::remove`]); a mapping change applies to the next push. A shop whose secret variables
//! are not set is skipped — logged and reported in `CONNECTOR_STATE` naming the variable — and
//! the other shops run.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError},
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use stockflow_proto::subjects;
use stockflow_shared::{
    consume::{ConsumeSettings, Consumer, Pull},
    deadletter::DeadLetters,
    health::{Health, HealthCheck},
    topology::{self, ConsumerSpec, TopologySettings},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{shop_of_item_key, ConfigStore, ShopReport},
    inbound::Shops,
    outbound::{self, Feed, Mappings, Pusher, ShopState},
    shops::{Item, ResolveError, ShopConfig},
    Secrets, Settings, ShopHandle,
};

/// What a shop's pipelines are built from.
pub(crate) struct Live {
    pub(crate) js: jetstream::Context,
    pub(crate) store: ConfigStore,
    pub(crate) health: Health,
    pub(crate) can_process: HealthCheck,
    pub(crate) consume: ConsumeSettings,
    pub(crate) topology: TopologySettings,
    pub(crate) client: reqwest::Client,
    pub(crate) settings: Settings,
    pub(crate) secrets: Secrets,
    pub(crate) shops: Shops,
    pub(crate) mappings: Mappings,
    pub(crate) shutdown: CancellationToken,
    running: HashMap<String, Running>,
    /// Readiness checks by name, registered once (a restarted shop reuses its own).
    checks: HashMap<String, HealthCheck>,
    /// What was last recorded in `CONNECTOR_STATE`, by shop.
    reports: HashMap<String, ShopReport>,
    /// The newest `CONNECTOR_ITEMS` revision applied, by shop (the shops whose mappings have
    /// not changed since `sync` share its revision).
    items_revision: HashMap<String, u64>,
    /// Read by `sync`: every mapping up to it is applied.
    synced_revision: Option<u64>,
    /// Shops whose applied revision is not recorded yet.
    unrecorded: std::collections::HashSet<String>,
}

/// A shop's running pipeline.
struct Running {
    config: ShopConfig,
    /// `None`: configured but skipped (its report says why).
    started: Option<Started>,
}

struct Started {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    state: Arc<ShopState>,
    checks: Vec<HealthCheck>,
}

/// A metric label or consumer name that must live as long as the process: interned, so a shop
/// restarted many times leaks its names once.
fn interned(name: String) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.iter().find(|n| **n == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.push(leaked);
    leaked
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Live {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        js: jetstream::Context,
        store: ConfigStore,
        health: Health,
        can_process: HealthCheck,
        consume: ConsumeSettings,
        client: reqwest::Client,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            js,
            store,
            health,
            can_process,
            consume,
            topology: settings.worker.topology.clone(),
            client,
            secrets: settings.secrets.clone(),
            settings,
            shops: Shops::default(),
            mappings: Mappings::default(),
            shutdown,
            running: HashMap::new(),
            checks: HashMap::new(),
            reports: HashMap::new(),
            items_revision: HashMap::new(),
            synced_revision: None,
            unrecorded: std::collections::HashSet::new(),
        }
    }

    /// Writes the shops file's shops and items into the buckets (the file is a declarative
    /// seed: what it names wins at each start; what it does not name is left alone).
    pub(crate) async fn seed(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        for shop in &self.settings.shops {
            self.store
                .put_shop(&shop.config)
                .await
                .with_context(|| format!("seeding shop {} from the shops file", shop.id))?;
            for item in shop.items.values() {
                self.store.put_item(&shop.id, item).await.with_context(|| {
                    format!(
                        "seeding item {:?} of shop {} from the shops file",
                        item.sku, shop.id
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Brings the running shops and the mappings in line with the buckets (at start, and after
    /// a watch had to be made anew).
    pub(crate) async fn sync(&mut self) -> anyhow::Result<()> {
        // Read first: every mapping listed below is at this revision or newer.
        let revision = self.store.items_revision().await?;
        let items = self.store.all_items().await?;
        let removed: Vec<(String, String)> = {
            let mappings = self.mappings.read().unwrap_or_else(PoisonError::into_inner);
            mappings
                .iter()
                .flat_map(|(shop, held)| {
                    held.keys()
                        .filter(|sku| !items.get(shop).is_some_and(|now| now.contains_key(*sku)))
                        .map(|sku| (shop.clone(), sku.clone()))
                })
                .collect()
        };
        for (shop, sku) in removed {
            self.set_mapping(&shop, &sku, None).await;
        }
        for (shop, items) in items {
            for (sku, item) in items {
                self.set_mapping(&shop, &sku, Some(item)).await;
            }
        }
        self.synced_revision = Some(self.synced_revision.map_or(revision, |r| r.max(revision)));
        self.unrecorded.extend(self.reports.keys().cloned());
        let shops = self.store.shops().await?;
        let ids: Vec<String> = shops.iter().map(|s| s.id.clone()).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|id| !ids.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id).await;
        }
        for shop in shops {
            self.apply(shop).await;
        }
        self.record_revisions().await;
        Ok(())
    }

    /// Starts `config`'s shop, restarts it if it changed, leaves it alone if not.
    pub(crate) async fn apply(&mut self, config: ShopConfig) {
        if let Some(running) = self.running.get(&config.id) {
            if running.config == config && running.started.is_some() {
                return;
            }
        }
        if let Some(previous) = self.running.remove(&config.id) {
            tracing::info!(shop = %config.id, "shop changed: restarting its pipeline");
            self.stop(&config.id, previous).await;
        }
        // A new channel (changed now, or while no connector ran) is found by `start`.
        let started = self.start(&config).await;
        self.running
            .insert(config.id.clone(), Running { config, started });
    }

    /// The newest `CONNECTOR_ITEMS` revision applied to `shop`'s mappings.
    fn applied_revision(&self, shop: &str) -> Option<u64> {
        let own = self.items_revision.get(shop).copied();
        own.max(self.synced_revision)
    }

    async fn report(&mut self, shop: &str, state: &str, reason: Option<String>) {
        let report = ShopReport {
            state: state.to_owned(),
            reason,
            at_ms: now_ms(),
            items_revision: self.applied_revision(shop),
        };
        self.write_report(shop, report).await;
        metrics::gauge!("stockflow_connector_shop_running", "shop" => shop.to_owned())
            .set(if state == "running" { 1.0 } else { 0.0 });
    }

    async fn write_report(&mut self, shop: &str, report: ShopReport) {
        if let Err(e) = self.store.report(shop, &report).await {
            tracing::warn!(shop, error = %e, "cannot record the shop's state");
        }
        self.unrecorded.remove(shop);
        self.reports.insert(shop.to_owned(), report);
    }

    /// Records in each reported shop's `CONNECTOR_STATE` the revision its mappings reached, once
    /// the watch has nothing more pending (a bulk import is one write per shop, not per row).
    async fn record_revisions(&mut self) {
        let shops: Vec<String> = self.unrecorded.drain().collect();
        for shop in shops {
            let Some(report) = self.reports.get(&shop) else {
                continue;
            };
            let revision = self.applied_revision(&shop);
            if report.items_revision == revision {
                continue;
            }
            let report = ShopReport {
                items_revision: revision,
                ..report.clone()
            };
            self.write_report(&shop, report).await;
        }
    }

    /// The readiness check `name`, registered once.
    fn check(&mut self, name: String) -> HealthCheck {
        match self.checks.get(&name) {
            Some(check) => check.clone(),
            None => {
                let check = self.health.check(name.clone());
                self.checks.insert(name, check.clone());
                check
            }
        }
    }

    async fn start(&mut self, config: &ShopConfig) -> Option<Started> {
        let id = config.id.clone();
        let secrets = self.secrets.clone();
        let mut shop = match config.resolve(&|var| secrets.lookup(var)) {
            Ok(shop) => shop,
            Err(e) => {
                match &e {
                    ResolveError::Missing(missing) => tracing::error!(
                        shop = %id,
                        field = missing.field,
                        variable = %missing.var,
                        "shop skipped: a secret variable it names is not set in the connector's environment"
                    ),
                    ResolveError::NotAllowed(refused) => tracing::error!(
                        shop = %id,
                        field = refused.field,
                        variable = %refused.var,
                        "shop skipped: a secret variable it names is not on STOCKFLOW_CONNECTOR_SECRET_VARIABLES"
                    ),
                    ResolveError::Invalid(_) => {
                        tracing::error!(shop = %id, error = %e, "shop skipped: invalid configuration")
                    }
                }
                self.report(&id, "skipped", Some(e.to_string())).await;
                return None;
            }
        };
        shop.items = HashMap::new();
        let platform = match crate::platform_of(&shop, self.client.clone()) {
            Ok(platform) => platform,
            Err(e) => {
                tracing::error!(shop = %id, error = %format!("{e:#}"), "shop skipped");
                self.report(&id, "skipped", Some(format!("{e:#}"))).await;
                return None;
            }
        };
        self.follow_channel(&id, &shop.channel).await;
        if let Err(e) =
            topology::ensure_connector_consumer(&self.js, &id, &shop.channel, &self.topology).await
        {
            tracing::error!(shop = %id, error = %e, "shop skipped: its consumers cannot be declared");
            self.report(
                &id,
                "skipped",
                Some(format!("declaring its consumers: {e}")),
            )
            .await;
            return None;
        }
        outbound::register_metrics(&id);
        for outcome in crate::inbound::OUTCOMES {
            metrics::counter!("stockflow_connector_webhooks_total", "shop" => id.clone(), "outcome" => outcome)
                .increment(0);
        }
        let state = Arc::new(ShopState::with_mappings(
            shop.clone(),
            platform.clone(),
            self.mappings.clone(),
        ));
        let stop = self.shutdown.child_token();
        let mut tasks = JoinSet::new();
        let (pusher, queue) = Pusher::new(state.clone(), self.settings.batch_window);
        tasks.spawn(pusher.run(stop.clone()));
        let feed = Arc::new(Feed::new(
            state.clone(),
            queue,
            self.js.clone(),
            self.settings.retry.clone(),
            self.settings.clock.clone(),
        ));
        let mut checks = Vec::new();
        for (stream, durable, check, max_in_flight) in [
            (
                subjects::AVAILABILITY,
                interned(topology::connector_durable(&id)),
                format!("consumer_connector_{id}"),
                Some(platform.max_batch() * 2),
            ),
            (
                subjects::CONNECTOR_RETRIES,
                interned(topology::connector_retries_durable(&id)),
                format!("consumer_connector_{id}_retries"),
                None,
            ),
        ] {
            let bound = self.check(check);
            checks.push(bound.clone());
            let mut settings = self.consume.clone();
            if let Some(max) = max_in_flight {
                settings.max_in_flight = max;
            }
            // A push may wait for the platform's budget: pull only what can go out soon.
            settings.pull = Pull::WithinWindow;
            let consumer = Consumer {
                js: self.js.clone(),
                spec: ConsumerSpec { stream, durable },
                dead_letters: DeadLetters::new(self.js.clone()),
                bound,
                can_process: self.can_process.clone(),
                settings,
            };
            tasks.spawn(consumer.run(feed.clone(), stop.clone()));
        }
        self.shops
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                id.clone(),
                Arc::new(ShopHandle {
                    shop,
                    platform,
                    state: state.clone(),
                }),
            );
        tracing::info!(shop = %id, channel = %config.channel, platform = config.platform.as_str(), "shop running");
        self.report(&id, "running", None).await;
        Some(Started {
            stop,
            tasks,
            state,
            checks,
        })
    }

    /// Stops a shop's pipeline: its webhooks are answered 404, its consume loops finish what is
    /// in flight and stop.
    async fn stop(&mut self, id: &str, running: Running) {
        self.shops
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        let Some(mut started) = running.started else {
            return;
        };
        started.stop.cancel();
        while started.tasks.join_next().await.is_some() {}
        // A stopped shop has nothing to bind: it must not hold the connector's readiness.
        for check in &started.checks {
            check.set(true);
        }
    }

    /// A shop removed from the bucket: its pipeline stops and its durable consumers are
    /// deleted. Kept, they would show it in `stockctl connectors status` with a backlog nobody
    /// pushes, and a shop added again under the same id — perhaps at another channel — would
    /// resume a stale position; made anew, its consumer delivers the newest quantity of every
    /// SKU of its channel, which is what a shop that was away needs.
    pub(crate) async fn remove(&mut self, id: &str) {
        if let Some(running) = self.running.remove(id) {
            tracing::info!(shop = %id, "shop removed: stopping its pipeline and deleting its consumers");
            self.stop(id, running).await;
        }
        self.delete_consumers(id).await;
        self.reports.remove(id);
        self.unrecorded.remove(id);
        if let Err(e) = self.store.forget(id).await {
            tracing::warn!(shop = %id, error = %e, "cannot forget the shop's state");
        }
        metrics::gauge!("stockflow_connector_shop_running", "shop" => id.to_owned()).set(0.0);
    }

    /// If the shop's feed consumer follows another channel than `channel` (the shop's channel
    /// changed, perhaps while no connector ran), deletes its consumers: made anew, they deliver
    /// the new channel's quantity of every SKU. (`ensure_connector_consumer` only verifies, and
    /// `setup --update` does not declare connector consumers.)
    async fn follow_channel(&self, id: &str, channel: &str) {
        let declared = topology::connector_consumer_config(id, channel, &self.topology);
        let durable = topology::connector_durable(id);
        let Ok(stream) = self.js.get_stream_no_info(subjects::AVAILABILITY).await else {
            // Reported by the declaration that follows.
            return;
        };
        let Ok(info) = stream.consumer_info(&durable).await else {
            // None yet (or JetStream is away: the declaration that follows reports it).
            return;
        };
        let actual = &info.config;
        if actual.filter_subject == declared.filter_subject && actual.filter_subjects.is_empty() {
            return;
        }
        tracing::info!(
            shop = %id,
            %channel,
            followed = %actual.filter_subject,
            "the shop's channel changed: its consumers are made anew"
        );
        self.delete_consumers(id).await;
    }

    async fn delete_consumers(&self, id: &str) {
        for (stream, durable) in [
            (subjects::AVAILABILITY, topology::connector_durable(id)),
            (
                subjects::CONNECTOR_RETRIES,
                topology::connector_retries_durable(id),
            ),
        ] {
            let Ok(stream) = self.js.get_stream_no_info(stream).await else {
                continue;
            };
            if let Err(e) = stream.delete_consumer(&durable).await {
                tracing::debug!(%durable, error = %e, "consumer not deleted (there may be none)");
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) the mapping of `sku` in `shop`; when that changes it,
    /// [`Self::mapping_changed`]. The watch and [`Self::sync`] both apply mappings here.
    async fn set_mapping(&self, shop: &str, sku: &str, item: Option<Item>) {
        let mapped = item.is_some();
        let changed = {
            let mut mappings = self
                .mappings
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match item {
                Some(item) => {
                    let items = mappings.entry(shop.to_owned()).or_default();
                    items.insert(sku.to_owned(), item.clone()) != Some(item)
                }
                None => mappings
                    .get_mut(shop)
                    .is_some_and(|items| items.remove(sku).is_some()),
            }
        };
        if changed {
            self.mapping_changed(shop, sku, mapped).await;
        }
    }

    /// A mapping of `sku` in `shop` was added, changed or removed: the quantity known on the
    /// platform is another item's, and a new or changed mapping gets the SKU's newest quantity
    /// pushed now (a request on `connectors.retry.<shop>.<sku-token>`, as a replayed dead letter
    /// does), not at its next change.
    async fn mapping_changed(&self, shop: &str, sku: &str, mapped: bool) {
        let Some(started) = self.running.get(shop).and_then(|r| r.started.as_ref()) else {
            return;
        };
        started.state.forget(sku);
        if !mapped {
            return;
        }
        let subject = subjects::connector_retry(shop, &subjects::encode_token(sku));
        match self.js.publish(subject, bytes::Bytes::new()).await {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::warn!(shop, error = %e, "the newly mapped SKU's push was not requested; its next change pushes it");
                }
            }
            Err(e) => {
                tracing::warn!(shop, error = %e, "the newly mapped SKU's push was not requested; its next change pushes it")
            }
        }
    }

    /// Applies one change of `CONNECTOR_SHOPS`.
    async fn shop_entry(&mut self, entry: kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<ShopConfig>(&entry.value) {
                Ok(config) if config.id == entry.key => self.apply(config).await,
                Ok(_) => {
                    tracing::error!(key = %entry.key, "a shop stored under another id's key: ignored")
                }
                Err(e) => {
                    tracing::error!(key = %entry.key, error = %e, "an unreadable shop: ignored");
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => self.remove(&entry.key).await,
        }
    }

    /// Applies one change of `CONNECTOR_ITEMS`, and records the revisions reached once the
    /// watch has caught up.
    async fn item_entry(&mut self, entry: kv::Entry) {
        if let Some(shop) = shop_of_item_key(&entry.key).map(str::to_owned) {
            self.apply_item(&shop, &entry).await;
            let revision = self.items_revision.entry(shop.clone()).or_default();
            *revision = (*revision).max(entry.revision);
            self.unrecorded.insert(shop);
        }
        if entry.delta == 0 {
            self.record_revisions().await;
        }
    }

    async fn apply_item(&self, shop: &str, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Item>(&entry.value) {
                Ok(item) => self.set_mapping(shop, &item.sku.clone(), Some(item)).await,
                Err(e) => {
                    tracing::error!(key = %entry.key, error = %e, "an unreadable item mapping: ignored");
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                let sku = self
                    .mappings
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(shop)
                    .and_then(|items| {
                        items
                            .keys()
                            .find(|sku| crate::config::item_key(shop, sku) == entry.key)
                            .cloned()
                    });
                if let Some(sku) = sku {
                    self.set_mapping(shop, &sku, None).await;
                }
            }
        }
    }

    /// Follows both buckets until shutdown, then stops every shop.
    pub(crate) async fn follow(mut self) {
        loop {
            let watches = async {
                let shops = self.store.shops.watch(">").await?;
                let items = self.store.items.watch(">").await?;
                anyhow::Ok((shops, items))
            };
            let (mut shops, mut items) = match watches.await {
                Ok(watches) => watches,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the connector's buckets; trying again in a second");
                    tokio::select! {
                        () = self.shutdown.cancelled() => break,
                        // Back-off between attempts while NATS is away.
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // What changed before the watches began (at start: everything).
            if let Err(e) = self.sync().await {
                tracing::warn!(error = %format!("{e:#}"), "reading the connector's buckets; trying again in a second");
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => {
                        self.stop_all().await;
                        return;
                    }
                    entry = shops.next() => match entry {
                        Some(Ok(entry)) => self.shop_entry(entry).await,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "watching CONNECTOR_SHOPS; watching anew");
                            break;
                        }
                        None => break,
                    },
                    entry = items.next() => match entry {
                        Some(Ok(entry)) => self.item_entry(entry).await,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "watching CONNECTOR_ITEMS; watching anew");
                            break;
                        }
                        None => break,
                    },
                }
            }
        }
        self.stop_all().await;
    }

    async fn stop_all(&mut self) {
        let running: Vec<(String, Running)> = self.running.drain().collect();
        for (id, running) in running {
            self.stop(&id, running).await;
        }
    }
}
