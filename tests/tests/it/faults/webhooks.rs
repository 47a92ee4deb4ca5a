//! The webhook end of the run: a real HTTP receiver on 127.0.0.1 that verifies every signature
//! the way a customer would (`notify::verify`) and records the event ids it was given, and the
//! subscription that sends it every alert and every order result.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};

use crate::notify::{verify, SECRET};

/// The event types the receiver subscribes to: every alert and every order result.
pub(crate) const EVENTS: [&str; 7] = [
    "low_stock",
    "out_of_stock",
    "back_in_stock",
    "negative_stock",
    "order_confirmed",
    "order_rejected",
    "order_released",
];

#[derive(Debug, Default)]
struct Seen {
    /// `X-Stockflow-Event-Id` of every POST.
    ids: HashSet<String>,
    posts: usize,
    /// Why a POST's signature did not verify.
    bad_signatures: Vec<String>,
}

/// What the receiver got, at the end.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deliveries {
    pub(crate) ids: HashSet<String>,
    pub(crate) posts: usize,
    pub(crate) bad_signatures: Vec<String>,
}

/// A webhook receiver on a free port; answers 204 to every POST.
#[derive(Debug, Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    pub(crate) async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/hook"),
            seen,
        }
    }

    pub(crate) fn deliveries(&self) -> Deliveries {
        let seen = self.seen.lock().expect("receiver state");
        Deliveries {
            ids: seen.ids.clone(),
            posts: seen.posts,
            bad_signatures: seen.bad_signatures.clone(),
        }
    }

    /// Writes the subscriptions file for `notify-worker` into `dir`; returns the worker's
    /// environment.
    pub(crate) fn worker_env(&self, dir: &Path) -> Vec<(String, String)> {
        let file: PathBuf = dir.join("webhooks.json");
        let subscriptions = serde_json::json!({"subscriptions": [
            {"id": "faults", "url": self.url, "events": EVENTS},
        ]});
        std::fs::write(&file, serde_json::to_vec(&subscriptions).expect("json"))
            .expect("write the subscriptions file");
        vec![
            (
                "STOCKFLOW_WEBHOOKS_FILE".into(),
                file.to_string_lossy().into_owned(),
            ),
            ("STOCKFLOW_WEBHOOK_SECRET".into(), SECRET.into()),
            // A short ack wait for the consumer notify creates per endpoint (5 s, the least the
            // workers accept): a delivery held by a killed worker comes back soon.
            (
                "STOCKFLOW_ACK_WAIT_SECONDS".into(),
                crate::notify::ACK_WAIT_SECONDS.into(),
            ),
            // The suite's ack wait is 2 s: a smaller window than the default 1024 inputs, and
            // more POSTs at once, keep inputs from waiting out their ack wait behind the
            // others after an outage (each such redelivery is one more POST).
            ("STOCKFLOW_MAX_IN_FLIGHT".into(), "256".into()),
            ("STOCKFLOW_WEBHOOK_CONCURRENCY".into(), "32".into()),
        ]
    }
}

async fn receive(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verified = verify(&headers, &body);
    let id = headers
        .get("x-stockflow-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut seen = seen.lock().expect("receiver state");
    seen.posts += 1;
    if let Err(e) = verified {
        seen.bad_signatures.push(format!("{id}: {e}"));
    }
    seen.ids.insert(id);
    StatusCode::NO_CONTENT
}
