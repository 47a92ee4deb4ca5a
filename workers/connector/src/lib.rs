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
    settings::{ConfigError, Env, Secret},
    startup::Failure,
    worker::{Service, WorkerSettings},
};

pub use stockflow_shared::retry::{Clock, RetryPolicy};

use crate::{
    outbound::ShopState,
    platform::Platform,
    shops::{PlatformKind, SecretLookup, Shop},
};

/// The secret variables the connector may read for its shops, and their values, read once at
/// start: those the shops file names (with the values its shops were read with) and those listed
/// in `STOCKFLOW_CONNECTOR_SECRET_VARIABLES`. A shop stored at run time that names any other
/// variable is skipped ([`shops::SecretLookup::NotAllowed`]): an admin token must not be able to
/// have the connector send one of the process's other variables (`STOCKFLOW_NATS_PASSWORD`) to
/// a URL of its choosing. Its `Debug` prints the names, never a value.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Allowed variable → its value (`None`: allowed, not set).
    allowed: Arc<HashMap<String, Option<Secret>>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.allowed.keys().collect();
        names.sort();
        f.debug_struct("Secrets").field("allowed", &names).finish()
    }
}

impl Secrets {
    /// These variables only, allowed and set (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            allowed: Arc::new(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Some(Secret::new(v))))
                    .collect(),
            ),
        }
    }

    /// Adds `var` = `value`, allowed.
    pub fn with(mut self, var: &str, value: &str) -> Self {
        Arc::make_mut(&mut self.allowed).insert(var.to_owned(), Some(Secret::new(value)));
        self
    }

    /// What a shop naming `var` gets.
    pub fn lookup(&self, var: &str) -> SecretLookup {
        match self.allowed.get(var) {
            Some(Some(value)) => SecretLookup::Set(value.expose().to_owned()),
            Some(None) => SecretLookup::Unset,
            None => SecretLookup::NotAllowed,
        }
    }

    /// The variables of `STOCKFLOW_CONNECTOR_SECRET_VARIABLES` (comma-separated names; none
    /// may be one of stockflow's own `STOCKFLOW_…` settings) read from `env`, and the shops
    /// file's, with the values its `shops` were read with.
    fn from_env(env: &Env, shops: &[Shop]) -> Result<Self, ConfigError> {
        let mut allowed = HashMap::new();
        for var in env
            .raw(shops::ALLOWLIST_VAR)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            shops::check_secret_var(var).map_err(|reason| ConfigError::Invalid {
                var: shops::ALLOWLIST_VAR,
                // An entry that is not a name may be a secret pasted there: not repeated.
                reason: if shops::is_env_name(var) {
                    format!("{var}: {reason}")
                } else {
                    format!("an entry: {reason}")
                },
            })?;
            allowed.insert(var.to_owned(), env.raw(var).map(Secret::new));
        }
        for shop in shops {
            let config = &shop.config;
            allowed.insert(
                config.webhook_secret_env.clone(),
                Some(shop.webhook_secret.clone()),
            );
            match (&shop.credentials, config) {
                (
                    shops::Credentials::AccessToken(token),
                    shops::ShopConfig {
                        access_token_env: Some(var),
                        ..
                    },
                ) => {
                    allowed.insert(var.clone(), Some(token.clone()));
                }
                (
                    shops::Credentials::ConsumerKey { key, secret },
                    shops::ShopConfig {
                        consumer_key_env: Some(key_var),
                        consumer_secret_env: Some(secret_var),
                        ..
                    },
                ) => {
                    allowed.insert(key_var.clone(), Some(key.clone()));
                    allowed.insert(secret_var.clone(), Some(secret.clone()));
                }
                _ => {}
            }
        }
        Ok(Self {
            allowed: Arc::new(allowed),
        })
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
    /// The secret variables shops may name, and their values
    /// (`STOCKFLOW_CONNECTOR_SECRET_VARIABLES` and the shops file's).
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
            secrets: Secrets::from_env(env, &shops)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_secret_variables_are_read() {
        let env = Env::from_pairs([
            (shops::ALLOWLIST_VAR, " ACME_TOKEN, GHOST_TOKEN ,"),
            ("ACME_TOKEN", "shpat_listed"),
            ("OTHER_TOKEN", "shpat_unlisted"),
            ("STOCKFLOW_NATS_PASSWORD", "nats-password"),
        ]);
        let secrets = Secrets::from_env(&env, &[]).expect("a valid list");
        assert_eq!(
            secrets.lookup("ACME_TOKEN"),
            SecretLookup::Set("shpat_listed".into())
        );
        assert_eq!(secrets.lookup("GHOST_TOKEN"), SecretLookup::Unset);
        assert_eq!(secrets.lookup("OTHER_TOKEN"), SecretLookup::NotAllowed);
        assert_eq!(
            secrets.lookup("STOCKFLOW_NATS_PASSWORD"),
            SecretLookup::NotAllowed
        );
        let printed = format!("{secrets:?}");
        assert!(printed.contains("ACME_TOKEN") && !printed.contains("shpat_listed"));

        let reserved =
            Env::from_pairs([(shops::ALLOWLIST_VAR, "ACME_TOKEN,STOCKFLOW_NATS_PASSWORD")]);
        let error = Secrets::from_env(&reserved, &[])
            .expect_err("stockflow's own settings are never a shop's secret")
            .to_string();
        assert!(
            error.contains(shops::ALLOWLIST_VAR) && error.contains("STOCKFLOW_NATS_PASSWORD"),
            "{error}"
        );
        let pasted = Env::from_pairs([(shops::ALLOWLIST_VAR, "shpat_0123")]);
        let error = Secrets::from_env(&pasted, &[])
            .expect_err("a secret pasted into the list")
            .to_string();
        assert!(!error.contains("shpat_0123"), "{error}");
    }
}
