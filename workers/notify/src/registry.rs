//! Webhook subscriptions kept in the `WEBHOOK_SUBSCRIPTIONS` key-value bucket: written by the
//! gateway's admin routes (`/v1/webhooks`), watched by notify-worker, which starts and stops
//! delivery loops as they come and go (`crate::endpoints`).
//!
//! One key per subscription id; the value is [`Stored`] as JSON, the same shape the API accepts.
//! The signing secret is stored with it (the bucket is as private as the NATS account that can
//! read it) and is never shown again: [`Stored`]'s `Debug` redacts it, and the API answers
//! only whether one is set.

use std::fmt;

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use stockflow_shared::{settings::Secret, topology};

use crate::subscriptions::{self, Fields, InvalidField, Subscription};

/// The bucket.
pub const BUCKET: &str = topology::WEBHOOK_SUBSCRIPTIONS;

/// Shortest signing secret the API accepts, bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest signing secret the API accepts, bytes.
pub const MAX_SECRET_BYTES: usize = 1024;

/// A subscription as the API accepts it and the bucket stores it. Unknown fields are errors, so
/// a typo (`sku` for `skus`) never silently widens a filter.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    /// Subscription id: the bucket key, `webhook-<id>` consumer, `endpoint` metric label.
    pub id: String,
    /// Where deliveries are POSTed (`http` or `https`).
    pub url: String,
    /// Event types delivered, or `*` for all.
    pub events: Vec<String>,
    /// Only events about one of these SKUs (unset: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skus: Option<Vec<String>>,
    /// Only events at one of these locations (unset: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<String>>,
    /// Only events about one of these sales channels (unset: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// The signing secret; unset: notify-worker's `STOCKFLOW_WEBHOOK_SECRET`. Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("id", &self.id)
            .field("events", &self.events)
            .field("skus", &self.skus)
            .field("locations", &self.locations)
            .field("channels", &self.channels)
            .field("secret_set", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl Stored {
    fn fields(&self) -> Fields<'_> {
        Fields {
            id: &self.id,
            url: &self.url,
            events: &self.events,
            skus: self.skus.as_deref(),
            locations: self.locations.as_deref(),
            channels: self.channels.as_deref(),
        }
    }

    /// The checks of the subscriptions file, and a secret of
    /// [`MIN_SECRET_BYTES`]..=[`MAX_SECRET_BYTES`] bytes when one is given.
    pub fn validate(&self) -> Result<(), InvalidField> {
        subscriptions::check(self.fields())?;
        match &self.secret {
            Some(secret) if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&secret.len()) => {
                Err(InvalidField {
                    field: "secret",
                    reason: format!(
                        "must be {MIN_SECRET_BYTES}..={MAX_SECRET_BYTES} bytes, got {}",
                        secret.len()
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// The subscription notify delivers to: its own secret, else `default_secret`.
    pub fn into_subscription(
        self,
        default_secret: Option<&Secret>,
    ) -> Result<Subscription, InvalidField> {
        self.validate()?;
        let checked = subscriptions::check(self.fields())?;
        let secret = match self.secret {
            Some(secret) => Secret::new(secret),
            None => default_secret.cloned().ok_or_else(|| InvalidField {
                field: "secret",
                reason: format!(
                    "not set, and notify-worker has no {}",
                    subscriptions::DEFAULT_SECRET_VAR
                ),
            })?,
        };
        Ok(checked.with_secret(self.id, secret))
    }

    /// Parses a value of the bucket.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Why a registry operation failed: the variant says what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The bucket was never declared: run `stockctl setup` or start a worker.
    #[error("the key-value bucket {BUCKET} does not exist: `stockctl setup` (or any worker's start) declares it")]
    Missing,
    /// `create` of an id that is taken.
    #[error("webhook subscription {0:?} exists already")]
    Exists(String),
    /// No subscription with this id.
    #[error("no webhook subscription {0:?}")]
    NotFound(String),
    /// A stored value is not a subscription (written by hand?).
    #[error("the stored webhook subscription {key:?} is not readable: {reason}")]
    Unreadable {
        /// Its key.
        key: String,
        /// The parse error.
        reason: String,
    },
    /// JetStream refused or did not answer: try again later.
    #[error("{action}: {source}")]
    Unavailable {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: async_nats::Error,
    },
}

fn unavailable<E: Into<async_nats::Error>>(
    action: impl Into<String>,
) -> impl FnOnce(E) -> RegistryError {
    let action = action.into();
    move |e| RegistryError::Unavailable {
        action,
        source: e.into(),
    }
}

/// The bucket of webhook subscriptions.
#[derive(Debug, Clone)]
pub struct Registry {
    store: kv::Store,
}

impl Registry {
    /// Opens the bucket; [`RegistryError::Missing`] when it was never declared.
    pub async fn open(js: &jetstream::Context) -> Result<Self, RegistryError> {
        let stream = format!("KV_{BUCKET}");
        match js.get_stream(&stream).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                return Err(RegistryError::Missing)
            }
            Err(e) => return Err(unavailable(format!("looking up bucket {BUCKET}"))(e)),
        }
        let store = js
            .get_key_value(BUCKET)
            .await
            .map_err(unavailable(format!("opening bucket {BUCKET}")))?;
        Ok(Self { store })
    }

    /// The bucket's keys (deleted ones left out).
    async fn keys(&self) -> Result<Vec<String>, RegistryError> {
        self.store
            .keys()
            .await
            .map_err(unavailable(format!("listing bucket {BUCKET}")))?
            .try_collect()
            .await
            .map_err(unavailable(format!("listing bucket {BUCKET}")))
    }

    /// Every stored subscription, by id.
    pub async fn list(&self) -> Result<Vec<Stored>, RegistryError> {
        let mut keys = self.keys().await?;
        keys.sort();
        let mut all = Vec::with_capacity(keys.len());
        for key in keys {
            // Deleted between the listing and the read: not listed.
            if let Some(stored) = self.read(&key).await? {
                all.push(stored);
            }
        }
        Ok(all)
    }

    /// The subscription `id`.
    pub async fn get(&self, id: &str) -> Result<Stored, RegistryError> {
        self.read(id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
    }

    async fn read(&self, key: &str) -> Result<Option<Stored>, RegistryError> {
        let Some(bytes) = self
            .store
            .get(key)
            .await
            .map_err(unavailable(format!("reading {key} in bucket {BUCKET}")))?
        else {
            return Ok(None);
        };
        Stored::from_json(&bytes)
            .map(Some)
            .map_err(|e| RegistryError::Unreadable {
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Stores a new subscription; [`RegistryError::Exists`] when its id is taken. Call
    /// [`Stored::validate`] first.
    pub async fn create(&self, stored: &Stored) -> Result<(), RegistryError> {
        let value = serde_json::to_vec(stored).map_err(|e| RegistryError::Unreadable {
            key: stored.id.clone(),
            reason: e.to_string(),
        })?;
        match self.store.create(&stored.id, value.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(RegistryError::Exists(stored.id.clone()))
            }
            Err(e) => Err(unavailable(format!(
                "storing {} in bucket {BUCKET}",
                stored.id
            ))(e)),
        }
    }

    /// Deletes the subscription `id`; [`RegistryError::NotFound`] when there is none.
    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let entry = self
            .store
            .entry(id)
            .await
            .map_err(unavailable(format!("reading {id} in bucket {BUCKET}")))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(RegistryError::NotFound(id.to_owned()));
        };
        // Only the value just read: a subscription re-created meanwhile is not deleted blindly.
        self.store
            .delete_expect_revision(id, Some(entry.revision))
            .await
            .map_err(unavailable(format!("deleting {id} in bucket {BUCKET}")))
    }

    /// The current entry of every key (deleted ones are left out): what [`Self::watch`] starts
    /// with, read without waiting for a change.
    pub async fn entries(&self) -> Result<Vec<kv::Entry>, RegistryError> {
        let keys = self.keys().await?;
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = self
                .store
                .entry(key.as_str())
                .await
                .map_err(unavailable(format!("reading {key} in bucket {BUCKET}")))?;
            entries.extend(entry.filter(|e| e.operation == kv::Operation::Put));
        }
        Ok(entries)
    }

    /// Every change from now on, after the current value of every key (deleted ones included,
    /// as deletions).
    pub async fn watch(&self) -> Result<kv::Watch, RegistryError> {
        self.store
            .watch_with_history(">")
            .await
            .map_err(unavailable(format!("watching bucket {BUCKET}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(json: &str) -> Stored {
        Stored::from_json(json.as_bytes()).expect("parses")
    }

    #[test]
    fn the_file_checks_apply_and_name_the_field() {
        let cases = [
            (
                r#"{"id": "a b", "url": "http://x/y", "events": ["*"]}"#,
                "id",
            ),
            (r#"{"id": "a", "url": "ftp://x/y", "events": ["*"]}"#, "url"),
            (
                r#"{"id": "a", "url": "http://x/y", "events": []}"#,
                "events",
            ),
            (
                r#"{"id": "a", "url": "http://x/y", "events": ["sold"]}"#,
                "events",
            ),
            (
                r#"{"id": "a", "url": "http://x/y", "events": ["*"], "skus": []}"#,
                "skus",
            ),
            (
                r#"{"id": "a", "url": "http://x/y", "events": ["*"], "locations": [""]}"#,
                "locations",
            ),
            (
                r#"{"id": "a", "url": "http://x/y", "events": ["*"], "channels": ["a b"]}"#,
                "channels",
            ),
            (
                r#"{"id": "a", "url": "http://x/y", "events": ["*"], "secret": "short"}"#,
                "secret",
            ),
        ];
        for (json, field) in cases {
            let err = stored(json).validate().expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
        }
        assert!(Stored::from_json(
            br#"{"id": "a", "url": "http://x/y", "events": ["*"], "sku": []}"#
        )
        .is_err());
    }

    #[test]
    fn the_secret_is_never_shown_and_falls_back_to_the_default() {
        let with = stored(
            r#"{"id": "crm", "url": "https://crm.example/h", "events": ["low_stock"], "secret": "sixteen-bytes-secret"}"#,
        );
        with.validate().expect("valid");
        let shown = format!("{with:?}");
        assert!(!shown.contains("sixteen-bytes-secret"), "{shown}");
        assert!(shown.contains("secret_set: true"), "{shown}");
        let sub = with.into_subscription(None).expect("own secret");
        assert_eq!(sub.secret.expose(), "sixteen-bytes-secret");

        let without = stored(r#"{"id": "erp", "url": "http://erp/h", "events": ["*"]}"#);
        let err = without
            .clone()
            .into_subscription(None)
            .expect_err("no secret anywhere");
        assert_eq!(err.field, "secret");
        assert!(err.reason.contains("STOCKFLOW_WEBHOOK_SECRET"), "{err}");
        let sub = without
            .into_subscription(Some(&Secret::new("default")))
            .expect("default secret");
        assert_eq!(sub.secret.expose(), "default");
    }
}
