//! The console (`/console` on the gateway) in a real browser: Debian's chromium, headless,
//! driven through chromedriver by a WebDriver client, against real nats-server, redis-server,
//! the stock worker and the gateway. Screenshots are kept under
//! `$CARGO_TARGET_DIR/console-screenshots/` (or `target/console-screenshots/`).
//!
//! Where no chromium or chromedriver is installed the test says how to install them and
//! returns: `python3 scripts/bootstrap.py --with chromium` (which `./dev test` and CI run).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{json, Value};
use stockflow_tests::{eventually, free_port, workspace_root, KillOnDrop, DEADLINE};
use tokio_util::sync::CancellationToken;

use crate::world::*;

const READ: &str = "console-read-token-0123456789";
const WRITE: &str = "console-write-token-0123456789";
const ADMIN: &str = "console-admin-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How soon a sale posted to the gateway shows on an open page (the measured time is printed).
const LIVE: Duration = Duration::from_secs(1);

/// The browser and its driver; both end with the test.
struct Browser {
    client: Client,
    shots: PathBuf,
    _driver: KillOnDrop,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (after saying how to install them) where chromium or chromedriver is missing.
    async fn start() -> Option<Self> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            eprintln!(
                "skipped: no {CHROMIUM} or {CHROMEDRIVER}; run `python3 scripts/bootstrap.py --with chromium`"
            );
            return None;
        }
        let port = free_port();
        let driver = KillOnDrop(
            std::process::Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("chromedriver to be ready", DEADLINE, || async {
            let status: Value = http
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (status["value"]["ready"] == true).then_some(())
        })
        .await;
        let profile = tempfile::tempdir().expect("profile dir");
        // The network is closed: without these chromium waits on services it cannot reach.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1100",
            "--force-device-scale-factor=1",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a chromium session");
        let shots = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace_root().join("target"), PathBuf::from)
            .join("console-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Some(Self {
            client,
            shots,
            _driver: driver,
            _profile: profile,
        })
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    /// The text of the first element `css` finds, once it exists.
    async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until the element `css` finds shows `expected`, within `deadline`.
    async fn wait_text(&self, css: &str, expected: &str, deadline: Duration) {
        eventually(&format!("{css} to show {expected:?}"), deadline, || async {
            (self.text(css).await.as_deref() == Some(expected)).then_some(())
        })
        .await;
    }

    /// Waits until `css` finds something.
    async fn wait_for(&self, css: &str) {
        eventually(&format!("{css} on the page"), DEADLINE, || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await;
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |found| found.len())
    }

    async fn sign_in(&self, base: &str, token: &str) {
        self.client
            .goto(&format!("{base}/console/#/stock"))
            .await
            .expect("open the console");
        let field = self
            .client
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Id("token"))
            .await
            .expect("the sign-in form");
        field.send_keys(token).await.expect("type the token");
        self.client
            .find(Locator::Id("sign-in-button"))
            .await
            .expect("the button")
            .click()
            .await
            .expect("sign in");
        self.wait_for("#nav:not([hidden])").await;
    }

    async fn sign_out(&self) {
        self.client
            .find(Locator::Id("sign-out"))
            .await
            .expect("sign-out button")
            .click()
            .await
            .expect("sign out");
        self.wait_for("#sign-in:not([hidden])").await;
    }

    async fn go(&self, base: &str, hash: &str) {
        self.client
            .goto(&format!("{base}/console/{hash}"))
            .await
            .expect("navigate");
    }
}

/// A gateway inside the test process.
struct Gateway {
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    running: gateway::Running,
}

impl Gateway {
    async fn start(world: &World) -> Self {
        let tokens = format!("read:{READ},write:{WRITE},admin:{ADMIN}");
        let settings = gateway::Settings::from_env(&world.env(&[
            ("STOCKFLOW_HTTP_ADDR", "127.0.0.1:0"),
            ("STOCKFLOW_GATEWAY_TOKENS", &tokens),
        ]))
        .expect("settings");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let running = gateway::start(settings, async move { signal.cancelled().await })
            .await
            .expect("gateway starts");
        Self {
            base: format!("http://{}", running.api_addr),
            http: reqwest::Client::new(),
            stop,
            running,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", stockflow_tests::unique_id());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn fact(&self, fact: Value) {
        let (status, body) = self
            .send(reqwest::Method::POST, "/v1/stock/events", WRITE, Some(fact))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.running.wait())
            .await
            .expect("gateway stops in time")
            .expect("gateway ends cleanly");
    }
}

#[tokio::test]
async fn the_console_shows_stock_live_and_lets_only_admins_replay() {
    let world = World::start().await;
    // Dead letters first, as a worker that gave up on them would leave them.
    let letters = crate::dead_letters::store_each_kind(&world, "console").await;
    let stock = world.stock_worker();
    let gw = Gateway::start(&world).await;
    let Some(browser) = Browser::start().await else {
        gw.shutdown().await;
        stock.shutdown().await;
        return;
    };
    let base = gw.base.clone();
    let sku = "TSHIRT-RED_M";
    for (location, quantity) in [("store-12", 24), ("wh-east", 100)] {
        gw.fact(json!({"type": "received", "sku": sku, "location": location, "quantity": quantity, "source": "wms"}))
            .await;
    }
    gw.fact(json!({"type": "policy_set", "sku": sku, "location": "store-12", "safety_stock": 2}))
        .await;
    world.wait_on_hand(sku, "wh-east", 100).await;
    let (status, body) = gw
        .send(
            reqwest::Method::PUT,
            "/v1/channels/web",
            ADMIN,
            Some(json!({"name": "Web shop", "kind": "web", "locations": ["store-12", "wh-east"], "rules": {"buffer": 5}})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    world.wait_availability("web", sku, 117).await;

    // A store manager with a read token: signs in, finds the SKU.
    browser.sign_in(&base, READ).await;
    browser.wait_text("#scope", "read access", DEADLINE).await;
    let field = browser
        .client
        .find(Locator::Id("sku"))
        .await
        .expect("search field");
    field.send_keys(sku).await.expect("type the SKU");
    browser
        .client
        .find(Locator::Css("#sku-form button"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("search");
    let on_hand = r#"#locations tr[data-location="store-12"] [data-field="on_hand"]"#;
    let available = r#"#locations tr[data-location="store-12"] [data-field="available"]"#;
    let web = r#"#channels tr[data-channel="web"] [data-field="available_to_sell"]"#;
    browser.wait_text(on_hand, "24", DEADLINE).await;
    browser.wait_text(available, "22", DEADLINE).await;
    browser.wait_text(web, "117", DEADLINE).await;
    browser.wait_text("#sku-view .live", "LIVE", DEADLINE).await;
    // A mark that a reload would wipe.
    browser
        .client
        .execute("window.notReloaded = true;", vec![])
        .await
        .expect("script");

    // A sale through the gateway shows on the open page, without a reload.
    let sold = Instant::now();
    gw.fact(json!({"type": "sold", "sku": sku, "location": "store-12", "quantity": 3}))
        .await;
    browser.wait_text(on_hand, "21", LIVE).await;
    eprintln!(
        "the sale showed on the page {:?} after it was posted",
        sold.elapsed()
    );
    browser.wait_text(available, "19", LIVE).await;
    browser.wait_text(web, "114", LIVE).await;
    let same_page = browser
        .client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .expect("script");
    assert_eq!(same_page, Value::Bool(true), "the page was not reloaded");
    assert!(
        browser.count("#ledger tbody tr").await >= 4,
        "the ledger lists the changes"
    );
    assert_eq!(
        browser.count("svg.chart path.line").await,
        1,
        "the chart is drawn"
    );
    browser.screenshot("stock.png").await;

    // Alerts as they happen: selling the rest of store-12 puts it out of stock.
    browser.go(&base, "#/alerts").await;
    browser.wait_text("#alerts-live", "LIVE", DEADLINE).await;
    gw.fact(json!({"type": "sold", "sku": sku, "location": "store-12", "quantity": 19}))
        .await;
    browser
        .wait_for(r##"#alerts-view tr td a[href="#/stock/TSHIRT-RED_M"]"##)
        .await;
    browser.screenshot("alerts.png").await;

    // A read token sees no replay button, and is told why.
    browser.go(&base, "#/dead-letters").await;
    browser.wait_for("#dl-view .error").await;
    let told = browser.text("#dl-view .error").await.unwrap_or_default();
    assert!(told.contains("admin token"), "{told}");
    assert_eq!(browser.count("button.replay").await, 0);

    // An admin replays the stock fact's dead letter from the page.
    browser.sign_out().await;
    browser.sign_in(&base, ADMIN).await;
    browser.go(&base, "#/dead-letters").await;
    let button = format!(r#"tr[data-sequence="{}"] button.replay"#, letters.stock);
    browser.wait_for(&button).await;
    assert_eq!(
        browser
            .count(&format!(
                r#"tr[data-sequence="{}"] button.replay"#,
                letters.derived
            ))
            .await,
        0,
        "no button for what is not replayable"
    );
    browser.screenshot("dead-letters.png").await;
    browser
        .client
        .find(Locator::Css(&button))
        .await
        .expect("replay button")
        .click()
        .await
        .expect("replay");
    eventually("the replayed row to go", DEADLINE, || async {
        (browser
            .count(&format!(r#"tr[data-sequence="{}"]"#, letters.stock))
            .await
            == 0)
            .then_some(())
    })
    .await;
    let (status, _) = gw
        .send(
            reqwest::Method::GET,
            &format!("/v1/dead-letters/{}", letters.stock),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the dead letter is gone");
    world
        .wait_on_hand(&letters.sku, "wh", letters.quantity)
        .await;

    // An order: its status, allocation and hold counting down.
    let orders = world.order_worker();
    let (status, body) = gw
        .send(
            reqwest::Method::POST,
            "/v1/orders?wait=5s",
            WRITE,
            Some(json!({"order_id": "web-console-1", "hold_seconds": 900,
                "lines": [{"line_id": "1", "sku": sku, "quantity": 2, "location": "wh-east"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    browser.go(&base, "#/orders/web-console-1").await;
    browser.wait_for("#order-view .badge.ok").await;
    let hold = browser
        .text("#order-view dd .num")
        .await
        .unwrap_or_default();
    assert!(hold.ends_with(" left"), "the hold counts down: {hold:?}");
    browser.screenshot("order.png").await;

    // The channels with their rules (admin).
    browser.go(&base, "#/channels").await;
    browser.wait_for("#channels-view tbody tr").await;
    let channel = browser
        .text("#channels-view tbody tr")
        .await
        .unwrap_or_default();
    assert!(
        channel.contains("Web shop") && channel.contains("buffer: 5"),
        "{channel}"
    );
    browser.screenshot("channels.png").await;

    // A phone-sized window, for the record.
    browser
        .client
        .set_window_size(390, 844)
        .await
        .expect("resize");
    browser.go(&base, &format!("#/stock/{sku}")).await;
    browser.wait_text(on_hand, "2", DEADLINE).await;
    browser.screenshot("stock-phone.png").await;

    // A token that stops working leads back to the sign-in, saying why.
    browser
        .client
        .execute(
            "sessionStorage.setItem('stockflow.console.token', 'withdrawn-token-0123456789'); location.reload();",
            vec![],
        )
        .await
        .expect("script");
    browser.wait_for("#sign-in-reason:not([hidden])").await;
    let reason = browser.text("#sign-in-reason").await.unwrap_or_default();
    assert!(reason.contains("not valid"), "{reason}");

    browser
        .client
        .clone()
        .close()
        .await
        .expect("browser closes");
    gw.shutdown().await;
    orders.shutdown().await;
    stock.shutdown().await;
}
