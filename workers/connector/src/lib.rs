#![doc = include_str!("../README.md")]

pub mod config;
pub mod facts;
pub mod inbound;
mod live;
pub mod outbound;
pub mod platform;
pub mod shopify;
pub mod shops;
pub mod status;
pub mod woocommerce;

use std::{collections::HashMap, fmt, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use stockflow_shared::{
    settings::{ConfigError, Env},
    startup::Failure,
    worker::{Service, WorkerSettings},
};

pub use stockflow_shared::retry::{Clock, RetryPolicy};

use crate::{
    outbound::ShopState,
    platform::Platform,
    shops::{PlatformKind, Shop},
};

/// Where the connector reads the secret variables its shops name: the values the shops file's
/// shops were read with at start, then the process environment (read when a shop starts, so a
/// shop added in `CONNECTOR_SHOPS` finds the variables the deployment sets). Its `Debug` prints
/// no value.
#[derive(Clone)]
pub struct Secrets {
    known: Arc<HashMap<String, String>>,
    process: bool,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("known", &self.known.keys().collect::<Vec<_>>())
            .field("process", &self.process)
            .finish()
    }
}

impl Secrets {
    /// The process environment only.
    pub fn process() -> Self {
        Self {
            known: Arc::default(),
            process: true,
        }
    }

    /// These values only (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            known: Arc::new(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            process: false,
        }
    }

    /// Adds `var` = `value`, ahead of the rest.
    pub fn with(mut self, var: &str, value: &str) -> Self {
        Arc::make_mut(&mut self.known).insert(var.to_owned(), value.to_owned());
        self
    }

    /// The value of `var`, if set.
    pub fn get(&self, var: &str) -> Option<String> {
        self.known
            .get(var)
            .cloned()
            .or_else(|| self.process.then(|| std::env::var(var).ok()).flatten())
    }

    /// The process environment, behind the secrets `shops` were read with.
    fn of_shops(shops: &[Shop]) -> Self {
        let mut known = HashMap::new();
        for shop in shops {
            let config = &shop.config;
            known.insert(
                config.webhook_secret_env.clone(),
                shop.webhook_secret.expose().to_owned(),
            );
            match (&shop.credentials, config) {
                (
                    shops::Credentials::AccessToken(token),
                    shops::ShopConfig {
                        access_token_env: Some(var),
                        ..
                    },
                ) => {
                    known.insert(var.clone(), token.expose().to_owned());
                }
                (
                    shops::Credentials::ConsumerKey { key, secret },
                    shops::ShopConfig {
                        consumer_key_env: Some(key_var),
                        consumer_secret_env: Some(secret_var),
                        ..
                    },
                ) => {
                    known.insert(key_var.clone(), key.expose().to_owned());
                    known.insert(secret_var.clone(), secret.expose().to_owned());
                }
                _ => {}
            }
        }
        Self {
            known: Arc::new(known),
            process: true,
        }
    }
}

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
    /// The shops of the shops file (`STOCKFLOW_CONNECTOR_SHOPS_FILE`, optional): written into
    /// the `CONNECTOR_SHOPS` and `CONNECTOR_ITEMS` buckets at start.
    pub shops: Vec<Shop>,
    /// Where the secret variables the shops name are read.
    pub secrets: Secrets,
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
    /// Reads the environment and the shops file, if one is named; errors name the variable
    /// (and the shop).
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
        let shops = shops::from_env(env)?.unwrap_or_default();
        Ok(Self {
            secrets: Secrets::of_shops(&shops),
            shops,
            listen: env.addr("STOCKFLOW_CONNECTOR_ADDR", "127.0.0.1:8090")?,
            batch_window: millis("STOCKFLOW_CONNECTOR_BATCH_MILLIS", 50, 0..=10_000)?,
            retry,
            worker,
            clock: Clock::system(),
        })
    }
}

pub(crate) fn platform_of(
    shop: &Shop,
    client: reqwest::Client,
) -> anyhow::Result<Arc<dyn Platform>> {
    Ok(match shop.platform {
        PlatformKind::Shopify => Arc::new(shopify::Shopify::new(shop, client)?),
        PlatformKind::Woocommerce => Arc::new(woocommerce::WooCommerce::new(shop, client)?),
    })
}

/// Runs the connector until `shutdown` resolves: the shops file (if any) seeded into the
/// buckets, then per shop of `CONNECTOR_SHOPS` a consumer on its channel's availability feed and
/// a pusher, followed live (`live`); for all, the webhook intake.
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
    let js = runtime.js.clone();
    let store = runtime
        .startup
        .wait("JetStream to open the connector's buckets", || async {
            config::ConfigStore::open(&js).await.map_err(|e| {
                let missing = matches!(e, config::StoreError::Missing(_));
                let e = anyhow::Error::new(e);
                if missing {
                    Failure::Misconfigured(e)
                } else {
                    Failure::Unavailable(e)
                }
            })
        })
        .await?;
    let live = live::Live::new(
        runtime.js.clone(),
        store,
        runtime.health.clone(),
        runtime.can_process(),
        settings.worker.consume.clone(),
        client,
        settings.clone(),
        runtime.shutdown.clone(),
    );
    let mut live = live;
    live.seed().await?;
    // The shops stored now run before the first webhook is answered; later changes are
    // followed from here (`Live::follow` reads the buckets again once its watches are set).
    live.sync()
        .await
        .context("reading the connector's shops (CONNECTOR_SHOPS, CONNECTOR_ITEMS)")?;
    let shops = live.shops.clone();
    runtime.spawn(live.follow());
    tracing::info!(seeded = settings.shops.len(), addr = %settings.listen, "connector ready");
    let app = inbound::router(inbound::Intake {
        shops,
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
        "stockflow_connector_shop_running",
        "1 while the shop's pipeline runs; 0 when it is skipped (see stockctl connectors status)"
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
