//! Channel definition changes (`CHANNEL_EVENTS`): checked, stored in the `CHANNELS` bucket, then
//! sent to every SKU as a recompute command on its own `stock.events.<sku-token>`. Each SKU's
//! channel quantity then follows in one atomic step on that SKU's keys, like any other change of
//! it — which is what lets channels run unchanged on Redis Cluster, where no script may touch
//! the keys of two SKUs.

use std::time::Instant;

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::{
    input::channel::{self, ChannelChange},
    msg_id, subjects,
    v1::{stock_event::Change, Channel, ChannelRecompute, EventMeta, Reason, StockEvent},
};
use stockflow_shared::{
    channels::{ChannelBook, Locations},
    consume::{Delivery, HandleError, Handled, Handler, Outcome},
    keys::Keys,
    redis_conn::RedisConnection,
    topology,
    worker::Runtime,
};

use crate::Settings;

/// Publishes this many recompute commands before waiting for their acknowledgements.
const FAN_OUT_WINDOW: usize = 1024;

/// Applies channel definition changes.
#[derive(Debug, Clone)]
pub struct ChannelRulesHandler {
    js: jetstream::Context,
    redis: RedisConnection,
    locations: Locations,
    book: ChannelBook,
    /// Where the SKUs are listed: one subject per SKU in the ledger.
    ledger_streams: Vec<&'static str>,
}

impl ChannelRulesHandler {
    /// A handler on the runtime's connections.
    pub fn new(runtime: &Runtime, settings: &Settings, book: ChannelBook) -> Self {
        Self {
            js: runtime.js.clone(),
            redis: runtime.redis.clone(),
            locations: Locations::new(&Keys::new(settings.state.redis.key_prefix.clone())),
            book,
            ledger_streams: topology::ledger_streams(&settings.worker.topology),
        }
    }

    async fn bucket(&self) -> Result<kv::Store, HandleError> {
        self.js
            .get_key_value(topology::CHANNELS)
            .await
            .map_err(HandleError::nats)
    }

    async fn last_entry(store: &kv::Store, id: &str) -> Result<Option<kv::Entry>, HandleError> {
        stockflow_shared::channels::last_entry(store, id)
            .await
            .map_err(HandleError::nats)
    }

    /// Stores `channel` unless the bucket holds exactly it already (a redelivery): its rules
    /// version either way.
    async fn store(&self, channel: &Channel) -> Result<u64, HandleError> {
        let store = self.bucket().await?;
        let value = Channel {
            rules_version: 0,
            ..channel.clone()
        }
        .encode_to_vec();
        if let Some(entry) = Self::last_entry(&store, &channel.id).await? {
            if entry.operation == kv::Operation::Put && entry.value.as_ref() == value.as_slice() {
                return Ok(entry.revision);
            }
        }
        store
            .put(&channel.id, value.into())
            .await
            .map_err(HandleError::nats)
    }

    /// Removes `id`: the rules version of its removal, `None` when it never existed.
    async fn remove(&self, id: &str) -> Result<Option<u64>, HandleError> {
        let store = self.bucket().await?;
        match Self::last_entry(&store, id).await? {
            None => Ok(None),
            Some(entry) if entry.operation != kv::Operation::Put => Ok(Some(entry.revision)),
            Some(_) => {
                store.delete(id).await.map_err(HandleError::nats)?;
                Ok(Self::last_entry(&store, id).await?.map(|e| e.revision))
            }
        }
    }

    /// Sends a recompute of `channel` at `rules_version` to every SKU the ledger knows. Ids
    /// derive from the channel and version, so a redelivered change sends nothing twice.
    async fn fan_out(&self, channel: &str, rules_version: u64) -> Result<usize, HandleError> {
        let started = Instant::now();
        let event_id = msg_id::channel_recompute_event(channel, rules_version);
        let mut sent = 0;
        let mut acks = Vec::with_capacity(FAN_OUT_WINDOW);
        for name in &self.ledger_streams {
            let stream = self.js.get_stream(name).await.map_err(HandleError::nats)?;
            let mut listed = stream
                .info_with_subjects("stock.changes.>")
                .await
                .map_err(HandleError::nats)?;
            while let Some(item) = listed.next().await {
                let (subject, _) = item.map_err(HandleError::nats)?;
                let Some(sku) =
                    subjects::stock_changed_token(&subject).and_then(subjects::decode_token)
                else {
                    continue;
                };
                let command = StockEvent {
                    meta: Some(EventMeta {
                        event_id: event_id.clone(),
                        source: "stockflow:channels".into(),
                        reason: Reason::Policy.into(),
                        ..Default::default()
                    }),
                    sku: sku.clone(),
                    change: Some(Change::ChannelRecompute(ChannelRecompute {
                        channel: channel.to_owned(),
                        rules_version,
                    })),
                    ..Default::default()
                };
                acks.push(crate::send_fact(&self.js, &command).await?);
                sent += 1;
                if acks.len() >= FAN_OUT_WINDOW {
                    for ack in acks.drain(..) {
                        ack.await.map_err(HandleError::nats)?;
                    }
                }
            }
        }
        for ack in acks {
            ack.await.map_err(HandleError::nats)?;
        }
        tracing::info!(
            %channel,
            rules_version,
            skus = sent,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "channel rules sent to every sku"
        );
        Ok(sent)
    }
}

impl Handler for ChannelRulesHandler {
    fn event_types(&self) -> &'static [&'static str] {
        &["channel_set", "channel_removed"]
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        let command = channel::parse(delivery.subject(), delivery.payload())?;
        let event_type = command.name();
        let version = match &command.change {
            ChannelChange::Set(channel) => {
                let unknown = self
                    .locations
                    .unknown(&self.redis, &channel.locations)
                    .await
                    .map_err(HandleError::redis)?;
                if let Some(first) = unknown.first() {
                    let index = channel
                        .locations
                        .iter()
                        .position(|l| l == first)
                        .unwrap_or_default();
                    return Err(HandleError::malformed(
                        event_type,
                        "unknown_location",
                        format!(
                            "locations[{index}] {first:?} has no stock recorded anywhere (receive or count stock there first)"
                        ),
                    ));
                }
                Some(self.store(channel).await?)
            }
            ChannelChange::Removed => self.remove(&command.channel_id).await?,
        };
        if let Some(version) = version {
            // The book hears of it through its watch too; this worker need not wait for that.
            let _ = self.book.lookup(&command.channel_id).await;
            self.fan_out(&command.channel_id, version).await?;
        }
        Ok(Handled {
            event_type,
            outcome: Outcome::Applied,
        })
    }
}
