//! `stockflow-demo`: a day of multi-channel traffic through real workers.
//!
//! Starts the stock, order and notify workers and the gateway in this process (against
//! `STOCKFLOW_NATS_URL` / `STOCKFLOW_REDIS_URL`) and a webhook receiver on 127.0.0.1, replays a
//! store chain's day — a warehouse receipt, transfers, POS sales at three stores, a marketplace
//! feed that re-sends some events, returns, damage, a cycle count (one of them stale), a restock,
//! and a few malformed messages — then sends the web shop's checkouts through the gateway and
//! prints the final levels, the alerts, the duplicates absorbed, the dead letters, the order
//! decisions and the signed webhook deliveries the receiver verified. Every run uses its own key
//! prefix, so it starts from zero.

use std::{
    collections::{BTreeMap, HashSet},
    io::Write as _,
    time::Duration,
};

use anyhow::Context as _;
use prost::Message as _;
use stockflow_cli::{
    events, last_sequence, read_after, read_levels,
    receiver::{Delivery, WebhookReceiver},
    wait_until_stock_caught_up,
};
use stockflow_proto::{
    msg_id, subjects,
    v1::{
        order_result, stock_event::Change, Adjusted, Counted, OrderResult, PolicySet, Reason,
        Received, ReleaseReason, Returned, Sold, StockAlert, StockEvent, Transferred,
    },
};
use stockflow_shared::{
    keys::Keys,
    settings::{Env, Secret},
};
use tokio_util::sync::CancellationToken;

const SKUS: &[&str] = &[
    "TSHIRT-BLK-M",
    "TSHIRT-BLK-L",
    "HOODIE-GRY-S",
    "SNEAKER-42",
    "MUG-LOGO",
    "Café crème 250g",
];
const STORES: &[&str] = &["store-01", "store-02", "store-03"];
const WAREHOUSE: &str = "wh-east";
/// The demo's webhook subscriptions: id, hook path on the receiver, event types.
const HOOKS: [(&str, &str, &[&str]); 2] = [
    (
        "demo-alerts",
        "alerts",
        &[
            "low_stock",
            "out_of_stock",
            "back_in_stock",
            "negative_stock",
        ],
    ),
    (
        "demo-orders",
        "orders",
        &["order_confirmed", "order_rejected", "order_released"],
    ),
];
/// How long the receiver may take to see every expected delivery once the day is over.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);
const WEB: &str = "web";

/// A tiny deterministic generator: the same day every run.
struct Dice(u64);

impl Dice {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // n is small; the modulo bias is irrelevant for a demo.
        (self.0 % n as u64) as usize
    }
}

/// One phase of the day: its events are published, then the worker catches up.
struct Phase {
    title: &'static str,
    events: Vec<Outgoing>,
}

enum Outgoing {
    /// A fact, published under its `Nats-Msg-Id` (`stockflow_proto::msg_id`).
    Fact(StockEvent),
    /// A re-send of an earlier event: same event_id, a `Nats-Msg-Id` of its own, as a channel's
    /// re-send after JetStream's duplicate window would be; the stock worker absorbs it.
    Resend(StockEvent),
    Malformed(&'static str, String, Vec<u8>),
}

/// The day's event ids: `<run>-<prefix>-<n>`, numbered in the order they are made.
struct Ids<'a> {
    run: &'a str,
    n: usize,
}

impl Ids<'_> {
    fn next(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{}-{prefix}-{:05}", self.run, self.n)
    }

    /// A fact with a fresh id, to publish as is.
    fn fact(
        &mut self,
        prefix: &str,
        source: &str,
        reason: Reason,
        sku: &str,
        location: &str,
        change: Change,
    ) -> Outgoing {
        Outgoing::Fact(events::fact(
            self.next(prefix),
            source,
            reason,
            sku,
            location,
            change,
        ))
    }
}

fn day(run: &str) -> Vec<Phase> {
    let mut ids = Ids { run, n: 0 };
    let mut dice = Dice(0x5eed_cafe);
    let opening = policies_and_receipt(&mut ids);
    let transfers = transfers(&mut ids);
    let (mut trading, marketplace) = trading(&mut ids, &mut dice);
    trading.extend(malformed(&mut ids));
    let evening = evening(&mut ids, marketplace);
    vec![
        Phase {
            title: "07:00 policies and the warehouse receipt",
            events: opening,
        },
        Phase {
            title: "08:00 transfers to the stores and the web shop",
            events: transfers,
        },
        Phase {
            title: "09:00-21:00 POS sales, marketplace feed, returns, damage",
            events: trading,
        },
        Phase {
            title: "21:30 cycle counts, restock, late marketplace re-sends",
            events: evening,
        },
    ]
}

/// Per SKU: a SKU-wide low-stock threshold, the web shop's policy, the warehouse receipt.
fn policies_and_receipt(ids: &mut Ids<'_>) -> Vec<Outgoing> {
    let mut events = Vec::new();
    for sku in SKUS {
        events.push(ids.fact(
            "pol",
            "erp",
            Reason::Policy,
            sku,
            "",
            Change::PolicySet(PolicySet {
                low_stock_threshold: Some(5),
                safety_stock: None,
                location_priority: vec![],
            }),
        ));
        events.push(ids.fact(
            "pol",
            "erp",
            Reason::Policy,
            sku,
            WEB,
            Change::PolicySet(PolicySet {
                low_stock_threshold: Some(8),
                safety_stock: Some(2),
                location_priority: vec![],
            }),
        ));
        events.push(ids.fact(
            "rcv",
            "wms",
            Reason::Received,
            sku,
            WAREHOUSE,
            Change::Received(Received { quantity: 400 }),
        ));
    }
    events
}

/// From the warehouse to every store (few sneakers to store-02) and to the web shop.
fn transfers(ids: &mut Ids<'_>) -> Vec<Outgoing> {
    let mut events = Vec::new();
    for sku in SKUS {
        for store in STORES {
            let quantity = if *sku == "SNEAKER-42" && *store == "store-02" {
                30
            } else {
                80
            };
            events.push(ids.fact(
                "trf",
                "wms",
                Reason::Transfer,
                sku,
                WAREHOUSE,
                Change::Transferred(Transferred {
                    to_location: (*store).into(),
                    quantity,
                }),
            ));
        }
        events.push(ids.fact(
            "trf",
            "wms",
            Reason::Transfer,
            sku,
            WAREHOUSE,
            Change::Transferred(Transferred {
                to_location: WEB.into(),
                quantity: 80,
            }),
        ));
    }
    events
}

/// A thousand sales — every fifth through the marketplace feed, which re-sends about one in
/// eight at once — returns now and then, and a damaged item. Also gives the marketplace's
/// sales, for the late re-sends of the evening.
fn trading(ids: &mut Ids<'_>, dice: &mut Dice) -> (Vec<Outgoing>, Vec<StockEvent>) {
    let mut events = Vec::new();
    let mut marketplace = Vec::new();
    for i in 0..1000 {
        let sku = SKUS[dice.next(SKUS.len())];
        if i % 5 == 0 {
            let event = events::fact(
                ids.next("mkt"),
                "marketplace:acme",
                Reason::Sold,
                sku,
                WEB,
                Change::Sold(Sold { quantity: 1 }),
            );
            // The marketplace feed re-sends about one order in eight, some of them at once.
            if dice.next(8) == 0 {
                events.push(Outgoing::Resend(event.clone()));
                marketplace.push(event.clone());
            }
            events.push(Outgoing::Fact(event));
        } else {
            let store = STORES[dice.next(STORES.len())];
            let sku = if store == "store-02" && dice.next(12) == 0 {
                "SNEAKER-42"
            } else {
                sku
            };
            let quantity = 1 + i64::try_from(dice.next(2)).unwrap_or(0);
            events.push(ids.fact(
                "pos",
                &format!("pos:{store}"),
                Reason::Sold,
                sku,
                store,
                Change::Sold(Sold { quantity }),
            ));
        }
        if i % 90 == 0 {
            let store = STORES[dice.next(STORES.len())];
            events.push(ids.fact(
                "ret",
                &format!("pos:{store}"),
                Reason::Returned,
                sku,
                store,
                Change::Returned(Returned { quantity: 1 }),
            ));
        }
    }
    events.push(ids.fact(
        "dmg",
        "pos:store-03",
        Reason::Damaged,
        "MUG-LOGO",
        "store-03",
        Change::Adjusted(Adjusted { delta: -2 }),
    ));
    (events, marketplace)
}

/// Messages the stock worker must dead-letter: undecodable bytes, a zero quantity, a missing
/// event_id, no fact type.
fn malformed(ids: &mut Ids<'_>) -> Vec<Outgoing> {
    let subject = subjects::stock_event("MUG-LOGO");
    let mut events = vec![Outgoing::Malformed(
        "undecodable bytes",
        subject.clone(),
        b"\x08\x96\x01garbage".to_vec(),
    )];
    let mut zero = events::fact(
        ids.next("bad"),
        "pos:store-01",
        Reason::Sold,
        "MUG-LOGO",
        "store-01",
        Change::Sold(Sold { quantity: 0 }),
    );
    events.push(Outgoing::Malformed(
        "zero quantity",
        subject.clone(),
        zero.encode_to_vec(),
    ));
    if let Some(meta) = zero.meta.as_mut() {
        meta.event_id.clear();
    }
    events.push(Outgoing::Malformed(
        "missing event_id",
        subject.clone(),
        zero.encode_to_vec(),
    ));
    zero.change = None;
    if let Some(meta) = zero.meta.as_mut() {
        meta.event_id = "no-type".into();
    }
    events.push(Outgoing::Malformed(
        "unknown fact type",
        subject,
        zero.encode_to_vec(),
    ));
    events
}

/// Cycle counts (one of them stale), a restock of the sneakers, and late re-sends from the
/// marketplace, hours after the originals.
fn evening(ids: &mut Ids<'_>, marketplace: Vec<StockEvent>) -> Vec<Outgoing> {
    let mut events = vec![
        ids.fact(
            "cnt",
            "handheld:store-01",
            Reason::CycleCount,
            "MUG-LOGO",
            "store-01",
            Change::Counted(Counted {
                on_hand: 3,
                expected_on_hand: Some(9_999),
            }),
        ),
        ids.fact(
            "cnt",
            "handheld:store-01",
            Reason::CycleCount,
            "HOODIE-GRY-S",
            "store-01",
            Change::Counted(Counted {
                on_hand: 7,
                expected_on_hand: None,
            }),
        ),
        ids.fact(
            "trf",
            "wms",
            Reason::Transfer,
            "SNEAKER-42",
            WAREHOUSE,
            Change::Transferred(Transferred {
                to_location: "store-02".into(),
                quantity: 80,
            }),
        ),
    ];
    events.extend(marketplace.into_iter().take(10).map(Outgoing::Resend));
    events
}

fn progress(done: usize, total: usize, title: &str) {
    let width = 30;
    let filled = done * width / total.max(1);
    eprint!(
        "\r  [{}{}] {done:>5}/{total} {title:<60}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    std::io::stderr().flush().ok();
}

/// The process environment with `overrides` on top: each in-process component gets its own.
fn overlay(overrides: &[(&str, String)]) -> Env {
    let map: BTreeMap<String, String> = overrides
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect();
    Env::from_fn(move |name| map.get(name).cloned().or_else(|| std::env::var(name).ok()))
}

/// A secret nobody can guess from outside this run (the demo's signing secret and gateway token).
fn fresh_secret(run: &str, purpose: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(run)
        .chain_update(purpose)
        .chain_update(std::process::id().to_le_bytes())
        .chain_update(format!("{:?}", std::time::SystemTime::now()))
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the subscriptions file that points the notify worker at `receiver`.
fn write_subscriptions(
    dir: &std::path::Path,
    receiver: &WebhookReceiver,
) -> anyhow::Result<std::path::PathBuf> {
    let subscriptions: Vec<serde_json::Value> = HOOKS
        .iter()
        .map(|(id, hook, events)| {
            serde_json::json!({"id": id, "url": receiver.url(hook), "events": events})
        })
        .collect();
    let path = dir.join("webhooks.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&serde_json::json!({ "subscriptions": subscriptions }))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The id the notify worker delivers a derived event under: its `Nats-Msg-Id`, or
/// `<stream>:<sequence>` without one (workers/notify/README.md).
fn delivery_id(message: &async_nats::jetstream::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| match message.info() {
            Ok(info) => format!("{}:{}", info.stream, info.stream_sequence),
            Err(_) => message.subject.to_string(),
        })
}

/// One checkout through the gateway, waiting up to 2 s for the decision.
async fn checkout(
    http: &reqwest::Client,
    api: std::net::SocketAddr,
    token: &Secret,
    run: &str,
    (n, sku, quantity, hold_seconds): (usize, &str, i64, i64),
) -> anyhow::Result<String> {
    let order_id = format!("{run}-order-{n}");
    let answer = http
        .post(format!("http://{api}/v1/orders?wait=2s"))
        .bearer_auth(token.expose())
        .header("Idempotency-Key", format!("{run}-chk-{n}"))
        .json(&serde_json::json!({
            "order_id": order_id,
            "source": "web:checkout",
            "lines": [{"line_id": "1", "sku": sku, "quantity": quantity}],
            "hold_seconds": hold_seconds,
        }))
        .send()
        .await
        .with_context(|| format!("POST /v1/orders for {order_id}"))?;
    let status = answer.status();
    let body: serde_json::Value = answer
        .json()
        .await
        .context("reading the gateway's answer")?;
    let detail = match status.as_u16() {
        201 => body["allocations"]
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| {
                        format!(
                            "{} x{} from {}",
                            l["sku"].as_str().unwrap_or("?"),
                            l["quantity"],
                            l["location"].as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        409 => body["shortfalls"]
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| {
                        format!(
                            "{} wanted {}, at most {} at one location",
                            l["sku"].as_str().unwrap_or("?"),
                            l["requested"],
                            l["available"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        202 => "no decision within 2s".to_owned(),
        _ => anyhow::bail!("the gateway answered {status} for {order_id}: {body}"),
    };
    Ok(format!(
        "order-{n:<3} {} {:<10} {detail}",
        status.as_u16(),
        body["decision"].as_str().unwrap_or("pending")
    ))
}

/// Prints the verified deliveries of this run, one line each, and a summary.
fn print_deliveries(receiver: &WebhookReceiver, run: &str, expected: &HashSet<String>) {
    let all = receiver.deliveries();
    let (ours, earlier): (Vec<&Delivery>, Vec<&Delivery>) =
        all.iter().partition(|d| d.body.to_string().contains(run));
    let mut seen = HashSet::new();
    let mut verified = 0;
    for (_, hook, _) in HOOKS {
        stockflow_cli::outln!("\n  POST /hooks/{hook}");
        for d in ours.iter().filter(|d| d.hook == hook) {
            if !seen.insert(d.event_id.clone()) {
                continue;
            }
            let about = if hook == "orders" {
                format!(
                    "{:<29}",
                    d.data("order_id").trim_start_matches(&format!("{run}-"))
                )
            } else {
                format!("{:<18} {:<10}", d.data("sku"), d.data("location"))
            };
            let signature = match &d.signature {
                Ok(()) => {
                    verified += 1;
                    "signature ok".to_owned()
                }
                Err(e) => format!("SIGNATURE REFUSED: {e}"),
            };
            stockflow_cli::outln!(
                "    {:<16} {about} {signature}  {}",
                d.event_type,
                d.event_id.replace(&format!("{run}-"), "")
            );
        }
    }
    let repeats = ours.len() - seen.len();
    stockflow_cli::outln!(
        "\nWebhooks: {} expected, {} delivered, {verified} signatures verified, {} repeated \
         (at-least-once: receivers dedup on X-Stockflow-Event-Id){}",
        expected.len(),
        seen.len(),
        repeats,
        if earlier.is_empty() {
            String::new()
        } else {
            format!(", {} left over from earlier runs", earlier.len())
        }
    );
}

const PROGRAM: stockflow_shared::cli::Program = stockflow_shared::cli::Program {
    name: "stockflow-demo",
    version: env!("CARGO_PKG_VERSION"),
    about: "Runs every worker in one process and plays a day at a three-store chain against the \
            NATS and Redis the environment points at.",
    commands: &[],
    listing_env: &[],
    // The demo's own defaults last: they replace the workers' in the listing.
    read_settings: |env| {
        let _ = stock_worker::Settings::from_env(env);
        let _ = env.string("STOCKFLOW_KEY_PREFIX", "demo<ms>");
        let _ = env.string("STOCKFLOW_LOG", "error");
    },
};

fn main() -> std::process::ExitCode {
    PROGRAM.answer_and_exit();
    if std::env::args().len() > 1 {
        eprintln!("usage: stockflow-demo (no arguments; see stockflow-demo --help)");
        return std::process::ExitCode::from(2);
    }
    stockflow_shared::cli::finish(demo())
}

#[tokio::main]
async fn demo() -> anyhow::Result<()> {
    let run = format!("demo{}", events::now_ms());
    let stack = Stack::start(&run).await?;
    let js = &stack.js;
    let topology = &stack.settings.worker.topology;
    // The ledger is one stream, or one per partition, each with its own sequence.
    let ledger_streams = stockflow_shared::topology::ledger_streams(topology);
    let marks = marks(js, &ledger_streams).await?;
    stockflow_cli::outln!(
        "stockflow demo — run {run}: a day at a three-store chain with a web shop\n"
    );
    let played = play(js, topology, &run, &day(&run)).await?;

    // The web shop's checkouts, through the gateway: orders that fit, one that asks for more
    // than any single location holds, and abandoned carts whose 1-second holds expire.
    let results_mark = last_sequence(js, subjects::ORDER_RESULTS).await?;
    let http = reqwest::Client::new();
    let mut checkouts = Vec::new();
    for cart in CARTS {
        checkouts.push(checkout(&http, stack.api, &stack.token, &run, cart).await?);
    }
    // 5 decisions and 2 expiries.
    let order_results = order_results(js, results_mark, CARTS.len() + 2).await?;
    wait_until_stock_caught_up(js, topology, Duration::from_secs(60)).await?;

    print_levels(&stack).await?;
    print_levels_from_the_gateway(&http, &stack).await?;
    let derived = Derived::read(js, &ledger_streams, &marks).await?;
    print_alerts(&derived.alerts)?;
    stockflow_cli::outln!("\nEvents published: {}  ledger entries: {}  duplicates re-sent and absorbed: {}  stale counts refused: {}", played.total, derived.ledger.len(), played.resent, derived.outcomes.len());
    print_dead_letters(&played.malformed, &derived.letters);
    stockflow_cli::outln!(
        "\nCheckouts through the gateway: POST /v1/orders?wait=2s (http://{})\n",
        stack.api
    );
    for line in &checkouts {
        stockflow_cli::outln!("  {line}");
    }
    print_order_results(&run, &order_results)?;

    // Every alert and order result of this run must reach the receiver, signed.
    let expected: HashSet<String> = derived
        .alerts
        .iter()
        .chain(&order_results)
        .map(delivery_id)
        .collect();
    let delivered = stack.receiver.wait_for(&expected, DELIVERY_DEADLINE).await;
    stockflow_cli::outln!(
        "\nWebhook deliveries received by http://{} (HMAC-SHA256 signatures checked)",
        stack.receiver.addr()
    );
    print_deliveries(&stack.receiver, &run, &expected);
    delivered.context("the notify worker did not deliver every alert and order result")?;

    let metrics_addr = stack.settings.worker.service.metrics_addr;
    stockflow_cli::outln!(
        "\nMetrics: http://{metrics_addr}/metrics   readiness: http://{metrics_addr}/readyz"
    );
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        stockflow_cli::outln!(
            "The workers and the gateway keep running so you can look; press Ctrl-C to stop."
        );
        stockflow_shared::shutdown_signal().await;
    }
    stack.stop().await
}

/// The web shop's carts: (number, SKU, units, hold seconds).
const CARTS: [(usize, &str, i64, i64); 5] = [
    (1, "TSHIRT-BLK-M", 2, 0),
    (2, "MUG-LOGO", 1, 0),
    (3, "SNEAKER-42", 500, 0),
    (4, "HOODIE-GRY-S", 1, 1),
    (5, "Café crème 250g", 3, 1),
];

/// Everything the demo runs in this process: the stock, order and notify workers, the gateway,
/// and the webhook receiver the notify worker delivers to.
struct Stack {
    settings: stock_worker::Settings,
    /// The run's key prefix.
    prefix: String,
    js: async_nats::jetstream::Context,
    stop: CancellationToken,
    workers: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    gateway: gateway::Running,
    api: std::net::SocketAddr,
    /// The gateway's write token, made for this run.
    token: Secret,
    receiver: WebhookReceiver,
    /// Holds the notify worker's subscriptions file.
    _scratch: tempfile::TempDir,
}

impl Stack {
    /// Starts every component, each with its own view of the environment.
    async fn start(run: &str) -> anyhow::Result<Self> {
        let env = Env::process();
        let prefix = env.string("STOCKFLOW_KEY_PREFIX", run);
        let worker_env = overlay(&[("STOCKFLOW_KEY_PREFIX", prefix.clone())]);
        let settings =
            stock_worker::Settings::from_env(&worker_env).context("invalid configuration")?;
        stockflow_shared::telemetry::LogSettings {
            filter: env.string("STOCKFLOW_LOG", "error"),
            json: false,
        }
        .init();

        let js = async_nats::jetstream::new(settings.worker.service.nats.connect().await?);
        stockflow_shared::topology::ensure(
            &js,
            &settings.worker.topology,
            stockflow_shared::topology::Mode::Verify,
        )
        .await?;
        let stop = CancellationToken::new();
        let stopped = |stop: &CancellationToken| {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        let mut workers = vec![(
            "worker task",
            tokio::spawn(stock_worker::run(settings.clone(), stopped(&stop))),
        )];
        let mut order_settings =
            order_worker::Settings::from_env(&worker_env).context("invalid configuration")?;
        order_settings.worker.service.metrics_addr =
            std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        order_settings.hold_poll = Duration::from_millis(50);
        workers.push((
            "order worker task",
            tokio::spawn(order_worker::run(order_settings, stopped(&stop))),
        ));

        // The alerts and order results go out as signed webhooks to a receiver of our own.
        let webhook_secret = Secret::new(fresh_secret(run, "webhook"));
        let receiver = WebhookReceiver::start(webhook_secret.clone())
            .await
            .context("starting the webhook receiver")?;
        let scratch = tempfile::tempdir().context("creating a temporary directory")?;
        let notify_settings = notify_worker::Settings::from_env(&overlay(&[
            (
                "STOCKFLOW_WEBHOOKS_FILE",
                write_subscriptions(scratch.path(), &receiver)?
                    .display()
                    .to_string(),
            ),
            (
                "STOCKFLOW_WEBHOOK_SECRET",
                webhook_secret.expose().to_owned(),
            ),
            ("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0".into()),
            ("STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS", "100".into()),
            ("STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS", "2000".into()),
        ]))
        .context("invalid notify-worker configuration")?;
        workers.push((
            "notify worker task",
            tokio::spawn(notify_worker::run(notify_settings, stopped(&stop))),
        ));

        // The web shop talks to the gateway, with a write token made for this run.
        let token = Secret::new(format!("demo-{}", fresh_secret(run, "token")));
        let gateway = gateway::start(
            gateway::Settings::from_env(&overlay(&[
                ("STOCKFLOW_KEY_PREFIX", prefix.clone()),
                ("STOCKFLOW_HTTP_ADDR", "127.0.0.1:0".into()),
                ("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0".into()),
                (
                    "STOCKFLOW_GATEWAY_TOKENS",
                    format!("write:{}", token.expose()),
                ),
            ]))
            .context("invalid gateway configuration")?,
            stopped(&stop),
        )
        .await
        .context("starting the gateway")?;
        Ok(Self {
            settings,
            prefix,
            js,
            stop,
            workers,
            api: gateway.api_addr,
            gateway,
            token,
            receiver,
            _scratch: scratch,
        })
    }

    /// Stops every component and waits for each to finish.
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for (name, task) in self.workers {
            task.await.context(name)??;
        }
        self.gateway.wait().await
    }
}

/// The last sequence of each stream the summary reads, before the day starts.
async fn marks(
    js: &async_nats::jetstream::Context,
    ledger_streams: &[&'static str],
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut marks = BTreeMap::new();
    for stream in ledger_streams
        .iter()
        .copied()
        .chain([subjects::ALERTS, subjects::DEAD_LETTERS])
    {
        marks.insert(stream, last_sequence(js, stream).await?);
    }
    Ok(marks)
}

/// What publishing the day sent.
struct Played {
    total: usize,
    resent: usize,
    malformed: Vec<&'static str>,
}

/// Publishes every phase, each followed by waiting until the stock workers caught up.
async fn play(
    js: &async_nats::jetstream::Context,
    topology: &stockflow_shared::topology::TopologySettings,
    run: &str,
    phases: &[Phase],
) -> anyhow::Result<Played> {
    let total: usize = phases.iter().map(|p| p.events.len()).sum();
    let mut played = Played {
        total,
        resent: 0,
        malformed: Vec::new(),
    };
    let mut done = 0;
    for phase in phases {
        for (i, event) in phase.events.iter().enumerate() {
            publish(js, run, event, done).await?;
            match event {
                Outgoing::Fact(_) => {}
                Outgoing::Resend(_) => played.resent += 1,
                Outgoing::Malformed(what, ..) => played.malformed.push(*what),
            }
            done += 1;
            if i % 25 == 0 {
                progress(done, total, phase.title);
            }
        }
        wait_until_stock_caught_up(js, topology, Duration::from_secs(120)).await?;
        progress(done, total, phase.title);
    }
    eprintln!();
    Ok(played)
}

/// Publishes message `n` of the day: a fact under its own `Nats-Msg-Id`, a re-send and a
/// malformed message under one made for this run.
async fn publish(
    js: &async_nats::jetstream::Context,
    run: &str,
    event: &Outgoing,
    n: usize,
) -> anyhow::Result<()> {
    let other_id = || format!("{run}-msg-{n}");
    match event {
        Outgoing::Fact(e) => {
            let event_id = e
                .meta
                .as_ref()
                .map(|m| m.event_id.as_str())
                .unwrap_or_default();
            events::publish(js, e, &msg_id::stock_fact(&e.sku, event_id)).await
        }
        Outgoing::Resend(e) => events::publish(js, e, &other_id()).await,
        Outgoing::Malformed(_, subject, bytes) => {
            events::publish_raw(js, subject, bytes.clone(), &other_id()).await
        }
    }
}

/// Reads `ORDER_RESULTS` after `mark` until `expected` results are in, or 30 s passed.
async fn order_results(
    js: &async_nats::jetstream::Context,
    mark: u64,
    expected: usize,
) -> anyhow::Result<Vec<async_nats::jetstream::Message>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let results = read_after(js, subjects::ORDER_RESULTS, "orders.results.>", mark).await?;
        if results.len() >= expected || std::time::Instant::now() > deadline {
            return Ok(results);
        }
        // Poll interval of a wait bounded by `deadline`.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The final levels of every SKU, read from Redis.
async fn print_levels(stack: &Stack) -> anyhow::Result<()> {
    let mut redis = stack.settings.state.redis.connect().await?;
    let keys = Keys::new(stack.prefix.clone());
    stockflow_cli::outln!("\nFinal levels (available = on_hand - reserved - safety stock)\n");
    stockflow_cli::outln!(
        "  {:<18} {:<10} {:>8} {:>9} {:>7} {:>10}",
        "sku",
        "location",
        "on_hand",
        "reserved",
        "safety",
        "available"
    );
    for sku in SKUS {
        for (location, l) in read_levels(&mut redis, &keys, sku).await? {
            stockflow_cli::outln!(
                "  {sku:<18} {location:<10} {:>8} {:>9} {:>7} {:>10}",
                l.on_hand,
                l.reserved,
                l.safety_stock,
                l.available()
            );
        }
    }
    Ok(())
}

/// One SKU's totals as the gateway serves them.
async fn print_levels_from_the_gateway(
    http: &reqwest::Client,
    stack: &Stack,
) -> anyhow::Result<()> {
    let stock: serde_json::Value = http
        .get(format!("http://{}/v1/stock/MUG-LOGO", stack.api))
        .bearer_auth(stack.token.expose())
        .send()
        .await
        .context("GET /v1/stock/MUG-LOGO")?
        .error_for_status()
        .context("GET /v1/stock/MUG-LOGO")?
        .json()
        .await
        .context("reading GET /v1/stock/MUG-LOGO")?;
    stockflow_cli::outln!(
        "\n  The gateway serves the same levels: GET /v1/stock/MUG-LOGO → totals {}",
        stock["totals"]
    );
    Ok(())
}

/// What the workers derived during the day.
struct Derived {
    ledger: Vec<async_nats::jetstream::Message>,
    outcomes: Vec<async_nats::jetstream::Message>,
    alerts: Vec<async_nats::jetstream::Message>,
    letters: Vec<async_nats::jetstream::Message>,
}

impl Derived {
    /// Reads every stream after its mark.
    async fn read(
        js: &async_nats::jetstream::Context,
        ledger_streams: &[&'static str],
        marks: &BTreeMap<&'static str, u64>,
    ) -> anyhow::Result<Self> {
        let (mut ledger, mut outcomes) = (Vec::new(), Vec::new());
        for stream in ledger_streams {
            ledger.extend(read_after(js, stream, "stock.changes.>", marks[stream]).await?);
            outcomes.extend(read_after(js, stream, "stock.outcomes.>", marks[stream]).await?);
        }
        let alerts = read_after(js, subjects::ALERTS, "alerts.>", marks[subjects::ALERTS]).await?;
        let letters = read_after(
            js,
            subjects::DEAD_LETTERS,
            "deadletter.>",
            marks[subjects::DEAD_LETTERS],
        )
        .await?;
        Ok(Self {
            ledger,
            outcomes,
            alerts,
            letters,
        })
    }
}

/// The alerts by kind, with the first few places each.
fn print_alerts(alerts: &[async_nats::jetstream::Message]) -> anyhow::Result<()> {
    let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in alerts {
        let alert = StockAlert::decode(message.payload.clone())?;
        let kind = message.subject.split('.').nth(1).unwrap_or("?").to_owned();
        by_kind
            .entry(kind)
            .or_default()
            .push(format!("{}@{}", alert.sku, alert.location));
    }
    stockflow_cli::outln!(
        "\nAlerts raised ({} in all, one per threshold crossing)\n",
        alerts.len()
    );
    for (kind, places) in &by_kind {
        let mut shown: Vec<&String> = places.iter().take(4).collect();
        shown.dedup();
        let more = places.len().saturating_sub(4);
        stockflow_cli::outln!(
            "  {kind:<15} {:>3}  {}{}",
            places.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if more > 0 {
                format!(", … {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// The dead letters' reasons.
fn print_dead_letters(malformed: &[&str], letters: &[async_nats::jetstream::Message]) {
    stockflow_cli::outln!(
        "\nDead letters ({} malformed messages sent)\n",
        malformed.len()
    );
    for letter in letters {
        let reason = stockflow_shared::deadletter::reason(letter);
        stockflow_cli::outln!("  {reason}");
    }
}

/// The order decisions and releases, one line each.
fn print_order_results(
    run: &str,
    order_results: &[async_nats::jetstream::Message],
) -> anyhow::Result<()> {
    stockflow_cli::outln!(
        "\nOrder results on ORDER_RESULTS (decisions, then the abandoned carts' expiries)\n"
    );
    for message in order_results {
        let result = OrderResult::decode(message.payload.clone())?;
        let line = match result.result {
            Some(order_result::Result::Confirmed(c)) => format!(
                "confirmed: {}",
                c.lines
                    .iter()
                    .map(|l| format!("{} x{} from {}", l.sku, l.quantity, l.location))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(order_result::Result::Rejected(r)) => format!(
                "rejected: {}",
                r.short_lines
                    .iter()
                    .map(|s| format!(
                        "{} wanted {}, at most {} at one location",
                        s.sku, s.requested, s.available
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(order_result::Result::Released(r)) => format!(
                "released: {:?}",
                ReleaseReason::try_from(r.reason).unwrap_or_default()
            ),
            None => "?".into(),
        };
        stockflow_cli::outln!(
            "  {:<26} {line}",
            result.order_id.trim_start_matches(&format!("{run}-"))
        );
    }
    Ok(())
}
