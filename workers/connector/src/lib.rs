#![doc = include_str!("../README.md")]

pub mod facts;
pub mod inbound;
pub mod outbound;
pub mod platform;
pub mod shopify;
pub mod shops;
pub mod status;
pub mod woocommerce;

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use stockflow_shared::{
    consume::Pull,
    settings::{ConfigError, Env},
    startup::Failure,
    topology::{self, ConsumerSpec},
    worker::{Service, WorkerSettings},
};

pub use stockflow_shared::retry::{Clock, RetryPolicy};

use crate::{
    outbound::{Feed, Pusher, ShopState},
    platform::Platform,
    shops::{PlatformKind, Shop},
};

/// A shop as the intake sees it.
#[derive(Debug)]
pub struct ShopHandle {
    /// The shop.
    pub shop: Shop,
    /// Its platform.
    pub platform: Arc<dyn Platform>,
    /// What its pusher knows the platform holds (the shop's own orders move it).
    pub state: Arc<ShopState>,
}

/// The connector's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS, listener, topology, consume loop.
    pub worker: WorkerSettings,
    /// The shops (`STOCKFLOW_CONNECTOR_SHOPS_FILE`).
    pub shops: Vec<Shop>,
    /// Where the webhooks are received (`STOCKFLOW_CONNECTOR_ADDR`).
    pub listen: SocketAddr,
    /// Back-off floor and ceiling, retry horizon (the breaker fields are not used).
    pub retry: RetryPolicy,
    /// How long the pusher waits for more items before a call (`STOCKFLOW_CONNECTOR_BATCH_MILLIS`).
    pub batch_window: Duration,
    /// Clock of the retry horizon.
    pub clock: Clock,
}

/// Longest retry horizon: a week.
pub const MAX_HORIZON_SECONDS: u64 = 7 * 24 * 3600;

impl Settings {
    /// Reads the environment and the shops file; errors name the variable (and the shop).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let worker = WorkerSettings::from_env(env, "connector", "127.0.0.1:9468")?;
        let millis =
            |var, default, range| env.bounded(var, default, range).map(Duration::from_millis);
        let retry = RetryPolicy {
            timeout: millis("STOCKFLOW_CONNECTOR_TIMEOUT_MILLIS", 10_000, 10..=300_000)?,
            backoff_floor: millis(
                "STOCKFLOW_CONNECTOR_BACKOFF_FLOOR_MILLIS",
                1_000,
                1..=600_000,
            )?,
            backoff_ceiling: millis(
                "STOCKFLOW_CONNECTOR_BACKOFF_CEILING_MILLIS",
                300_000,
                1..=3_600_000,
            )?,
            horizon: env.seconds(
                "STOCKFLOW_CONNECTOR_RETRY_HORIZON_SECONDS",
                24 * 3600,
                1..=MAX_HORIZON_SECONDS,
            )?,
            breaker_failures: 0,
            breaker_open: Duration::from_secs(1),
        };
        if retry.backoff_floor > retry.backoff_ceiling {
            return Err(ConfigError::Invalid {
                var: "STOCKFLOW_CONNECTOR_BACKOFF_FLOOR_MILLIS",
                reason: "must not exceed STOCKFLOW_CONNECTOR_BACKOFF_CEILING_MILLIS".into(),
            });
        }
        Ok(Self {
            shops: shops::from_env(env)?,
            listen: env.addr("STOCKFLOW_CONNECTOR_ADDR", "127.0.0.1:8090")?,
            batch_window: millis("STOCKFLOW_CONNECTOR_BATCH_MILLIS", 50, 0..=10_000)?,
            retry,
            worker,
            clock: Clock::system(),
        })
    }
}

fn platform_of(shop: &Shop, client: reqwest::Client) -> anyhow::Result<Arc<dyn Platform>> {
    Ok(match shop.platform {
        PlatformKind::Shopify => Arc::new(shopify::Shopify::new(shop, client)?),
        PlatformKind::Woocommerce => Arc::new(woocommerce::WooCommerce::new(shop, client)?),
    })
}

/// Runs the connector until `shutdown` resolves: per shop, a consumer on its channel's
/// availability feed and a pusher; for all, the webhook intake.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut runtime = Service::worker(&settings.worker).start(shutdown).await?;
    describe_metrics();
    let client = reqwest::Client::builder()
        .timeout(settings.retry.timeout)
        .connect_timeout(settings.retry.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stockflow-connector/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding STOCKFLOW_CONNECTOR_ADDR {}", settings.listen))?;
    let mut handles = HashMap::new();
    for shop in &settings.shops {
        let platform = platform_of(shop, client.clone())?;
        let (id, channel) = (shop.id.clone(), shop.channel.clone());
        let topology = settings.worker.topology.clone();
        let js = runtime.js.clone();
        runtime
            .startup
            .wait("JetStream to declare the connector consumers", || async {
                topology::ensure_connector_consumer(&js, &id, &channel, &topology)
                    .await
                    .map_err(|e| {
                        let unavailable = matches!(e, topology::TopologyError::JetStream { .. });
                        let e = anyhow::Error::new(e)
                            .context(format!("declaring the consumer of shop {id}"));
                        if unavailable {
                            Failure::Unavailable(e)
                        } else {
                            Failure::Misconfigured(e)
                        }
                    })
            })
            .await?;
        outbound::register_metrics(&shop.id);
        for outcome in inbound::OUTCOMES {
            metrics::counter!("stockflow_connector_webhooks_total", "shop" => shop.id.clone(), "outcome" => outcome)
                .increment(0);
        }
        let state = Arc::new(ShopState::new(shop.clone(), platform.clone()));
        let (pusher, queue) = Pusher::new(state.clone(), settings.batch_window);
        runtime.spawn(pusher.run(runtime.shutdown.clone()));
        // Named for the life of the process (metric labels): leaked once per shop.
        let durable: &'static str =
            Box::leak(topology::connector_durable(&shop.id).into_boxed_str());
        let mut consumer = runtime.consumer(
            ConsumerSpec {
                stream: stockflow_proto::subjects::AVAILABILITY,
                durable,
            },
            format!("consumer_connector_{}", shop.id),
        );
        consumer.settings.max_in_flight = platform.max_batch() * 2;
        // A push may wait for the platform's budget: pull only what can go out soon.
        consumer.settings.pull = Pull::WithinWindow;
        let feed = Feed::new(
            state.clone(),
            queue,
            runtime.js.clone(),
            settings.retry.clone(),
            settings.clock.clone(),
        );
        let feed = Arc::new(feed);
        runtime.spawn_consumer(consumer, feed.clone());
        // Replayed dead letters: the same handler pushes the SKU's newest quantity again.
        let durable: &'static str =
            Box::leak(topology::connector_retries_durable(&shop.id).into_boxed_str());
        let mut retries = runtime.consumer(
            ConsumerSpec {
                stream: stockflow_proto::subjects::CONNECTOR_RETRIES,
                durable,
            },
            format!("consumer_connector_{}_retries", shop.id),
        );
        retries.settings.pull = Pull::WithinWindow;
        runtime.spawn_consumer(retries, feed);
        handles.insert(
            shop.id.clone(),
            Arc::new(ShopHandle {
                shop: shop.clone(),
                platform,
                state,
            }),
        );
    }
    tracing::info!(shops = settings.shops.len(), addr = %settings.listen, "connector ready");
    let app = inbound::router(inbound::Intake {
        shops: Arc::new(handles),
        js: runtime.js.clone(),
        timeout: settings.retry.timeout,
    });
    runtime.serve(listener, app).await
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "stockflow_connector_pushes_total",
        "Push calls a shop answered"
    );
    describe_counter!(
        "stockflow_connector_quantities_pushed_total",
        "Quantities set on a shop"
    );
    describe_counter!(
        "stockflow_connector_throttles_total",
        "Push calls a shop throttled (429, THROTTLED)"
    );
    describe_counter!(
        "stockflow_connector_stale_compares_total",
        "Quantities a shop refused as stale (edited there)"
    );
    describe_counter!(
        "stockflow_connector_push_failures_total",
        "Push calls that failed (shop down, 5xx, refused)"
    );
    describe_counter!(
        "stockflow_connector_dead_letters_total",
        "Pushes dead-lettered (past the retry horizon, or refused)"
    );
    describe_counter!(
        "stockflow_connector_webhooks_total",
        "Inbound webhooks by shop and outcome"
    );
    describe_histogram!(
        "stockflow_connector_push_lag_seconds",
        Unit::Seconds,
        "From a channel quantity change to its push"
    );
    describe_gauge!(
        "stockflow_connector_shop_reachable",
        "1 while the shop's last call was answered"
    );
    describe_gauge!(
        "stockflow_connector_last_success_timestamp_seconds",
        "Unix time of the shop's last answered call"
    );
}
