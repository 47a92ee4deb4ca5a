//! Webhook subscriptions, read once from the JSON file named by `STOCKFLOW_WEBHOOKS_FILE` and
//! validated as a whole at start-up: every error names the setting and the subscription. The
//! field checks (`check`) are the same for the subscriptions of the `WEBHOOK_SUBSCRIPTIONS`
//! bucket (`crate::registry`).

use std::{collections::HashSet, path::PathBuf};

use serde::Deserialize;
use stockflow_proto::validate;
use stockflow_shared::settings::{ConfigError, Env, Secret};

use crate::event::EventType;

/// The variable naming the subscriptions file.
pub const FILE_VAR: &str = "STOCKFLOW_WEBHOOKS_FILE";
/// The signing secret of subscriptions that name none of their own.
pub const DEFAULT_SECRET_VAR: &str = "STOCKFLOW_WEBHOOK_SECRET";
/// ... or the file holding it.
pub const DEFAULT_SECRET_FILE_VAR: &str = "STOCKFLOW_WEBHOOK_SECRET_FILE";

/// Longest subscription id; ids are metric labels and subject tokens.
const MAX_ID_LEN: usize = 64;

/// One webhook endpoint and what it wants to hear about.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Short, stable name: the `endpoint` metric label and the dead letters' subject token.
    pub id: String,
    /// Where deliveries are POSTed (`http` or `https`).
    pub url: reqwest::Url,
    /// Signs every delivery (HMAC-SHA256).
    pub secret: Secret,
    /// Event types delivered; empty never happens (validated), `*` in the file means all.
    pub events: EventFilter,
    /// Only events about one of these SKUs (unset: any).
    pub skus: Option<HashSet<String>>,
    /// Only events about one of these locations (unset: any).
    pub locations: Option<HashSet<String>>,
    /// Only events about one of these sales channels (unset: any): channel quantities and
    /// oversold alerts of a channel, ledger entries of its sales and returns.
    pub channels: Option<HashSet<String>>,
}

/// Which event types a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    /// Every type (`"*"`).
    All,
    /// Only these.
    Only(HashSet<EventType>),
}

impl Subscription {
    /// Whether an event of `event_type` about `skus` at `locations` from `channels` goes to
    /// this endpoint. An event matches a SKU (location, channel) filter when it names at least
    /// one of the filter's SKUs (locations, channels); an event that names none (an order
    /// release names no SKU, a channel quantity no location, a store's sale no channel) never
    /// matches one.
    pub fn wants(
        &self,
        event_type: EventType,
        skus: &[String],
        locations: &[String],
        channels: &[String],
    ) -> bool {
        let type_ok = match &self.events {
            EventFilter::All => true,
            EventFilter::Only(types) => types.contains(&event_type),
        };
        let any_in = |filter: &Option<HashSet<String>>, values: &[String]| {
            filter
                .as_ref()
                .is_none_or(|wanted| values.iter().any(|v| wanted.contains(v)))
        };
        type_ok
            && any_in(&self.skus, skus)
            && any_in(&self.locations, locations)
            && any_in(&self.channels, channels)
    }
}

/// The file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    subscriptions: Vec<serde_json::Value>,
}

/// One entry of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    url: String,
    events: Vec<String>,
    #[serde(default)]
    skus: Option<Vec<String>>,
    #[serde(default)]
    locations: Option<Vec<String>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// Name of an environment variable holding the secret.
    #[serde(default)]
    secret_env: Option<String>,
    /// Path of a file holding the secret.
    #[serde(default)]
    secret_file: Option<PathBuf>,
}

fn invalid(reason: String) -> ConfigError {
    ConfigError::Invalid {
        var: FILE_VAR,
        reason,
    }
}

/// Reads and validates the subscriptions file named by `STOCKFLOW_WEBHOOKS_FILE`.
pub fn from_env(env: &Env) -> Result<Vec<Subscription>, ConfigError> {
    let Some(path) = env.path(FILE_VAR) else {
        return Err(invalid(
            "not set: name a JSON file of webhook subscriptions ({\"subscriptions\": [...]})"
                .into(),
        ));
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
        var: FILE_VAR,
        path: path.clone(),
        source,
    })?;
    let default_secret = env.secret(DEFAULT_SECRET_VAR, DEFAULT_SECRET_FILE_VAR)?;
    parse(&text, env, default_secret.as_ref())
        .map_err(|reason| invalid(format!("{}: {reason}", path.display())))
}

/// Parses and validates the file's text. Errors are `subscription "<id>": <field>: <problem>`.
pub fn parse(
    text: &str,
    env: &Env,
    default_secret: Option<&Secret>,
) -> Result<Vec<Subscription>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut seen = HashSet::new();
    let mut subscriptions = Vec::with_capacity(file.subscriptions.len());
    for (index, value) in file.subscriptions.into_iter().enumerate() {
        // Name the entry by its id when it has one, by its position otherwise.
        let label = value.get("id").and_then(|id| id.as_str()).map_or_else(
            || format!("subscriptions[{index}]"),
            |id| format!("subscription {id:?}"),
        );
        let entry: Entry = serde_json::from_value(value).map_err(|e| format!("{label}: {e}"))?;
        let subscription =
            validate(entry, env, default_secret).map_err(|e| format!("{label}: {e}"))?;
        if !seen.insert(subscription.id.clone()) {
            return Err(format!("{label}: id is used twice"));
        }
        subscriptions.push(subscription);
    }
    Ok(subscriptions)
}

/// A subscription field that is wrong: which one, and why. Its text is `<field>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field at fault (`id`, `url`, `events`, `skus`, `locations`, `channels`, `secret`).
    pub field: &'static str,
    /// What is wrong with it, for people; never holds a secret.
    pub reason: String,
}

impl InvalidField {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// What a subscription says, whatever its source (the file or the `WEBHOOK_SUBSCRIPTIONS`
/// bucket), before it is checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields<'a> {
    pub(crate) id: &'a str,
    pub(crate) url: &'a str,
    pub(crate) events: &'a [String],
    pub(crate) skus: Option<&'a [String]>,
    pub(crate) locations: Option<&'a [String]>,
    pub(crate) channels: Option<&'a [String]>,
}

/// A subscription's fields, checked; it lacks only its secret.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    url: reqwest::Url,
    events: EventFilter,
    skus: Option<HashSet<String>>,
    locations: Option<HashSet<String>>,
    channels: Option<HashSet<String>>,
}

impl Checked {
    /// The subscription `id` with this secret.
    pub(crate) fn with_secret(self, id: String, secret: Secret) -> Subscription {
        Subscription {
            id,
            url: self.url,
            secret,
            events: self.events,
            skus: self.skus,
            locations: self.locations,
            channels: self.channels,
        }
    }
}

/// Whether `id` is a valid subscription id: 1..=64 ASCII letters, digits, `-` or `_` (a subject
/// token, a consumer name, a metric label and a bucket key).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The one check of a subscription's fields, for the file and the bucket alike.
pub(crate) fn check(fields: Fields<'_>) -> Result<Checked, InvalidField> {
    if !valid_id(fields.id) {
        return Err(InvalidField::new(
            "id",
            format!("must be 1..={MAX_ID_LEN} ASCII letters, digits, '-' or '_'"),
        ));
    }
    let url = reqwest::Url::parse(fields.url)
        .map_err(|e| InvalidField::new("url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(InvalidField::new(
            "url",
            "must be an http:// or https:// URL with a host",
        ));
    }
    if fields.events.is_empty() {
        return Err(InvalidField::new(
            "events",
            format!("empty; list some of {} or \"*\"", EventType::names()),
        ));
    }
    let events = if fields.events.iter().any(|e| e == "*") {
        EventFilter::All
    } else {
        let mut types = HashSet::new();
        for name in fields.events {
            let event_type = EventType::from_name(name).ok_or_else(|| {
                InvalidField::new(
                    "events",
                    format!("unknown event type {name:?}; known: {}", EventType::names()),
                )
            })?;
            types.insert(event_type);
        }
        EventFilter::Only(types)
    };
    let set = |field: &'static str, values: Option<&[String]>| match values {
        None => Ok(None),
        Some(values) if values.is_empty() || values.iter().any(String::is_empty) => Err(
            InvalidField::new(field, "leave it out to match any, or list non-empty values"),
        ),
        Some(values) => Ok(Some(values.iter().cloned().collect::<HashSet<_>>())),
    };
    let channels = set("channels", fields.channels)?;
    for channel in channels.iter().flatten() {
        validate::validate_channel_id("channel", channel)
            .map_err(|reason| InvalidField::new("channels", reason))?;
    }
    Ok(Checked {
        url,
        events,
        skus: set("skus", fields.skus)?,
        locations: set("locations", fields.locations)?,
        channels,
    })
}

fn validate(
    entry: Entry,
    env: &Env,
    default_secret: Option<&Secret>,
) -> Result<Subscription, String> {
    let checked = check(Fields {
        id: &entry.id,
        url: &entry.url,
        events: &entry.events,
        skus: entry.skus.as_deref(),
        locations: entry.locations.as_deref(),
        channels: entry.channels.as_deref(),
    })
    .map_err(|e| e.to_string())?;
    let secret = match (entry.secret_env, entry.secret_file) {
        (Some(_), Some(_)) => return Err("set secret_env or secret_file, not both".into()),
        (Some(var), None) => Secret::new(
            env.raw(&var)
                .ok_or_else(|| format!("secret_env: the variable {var} is not set"))?,
        ),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("secret_file: cannot read {}: {e}", path.display()))?;
            Secret::new(text.trim_end_matches(['\n', '\r']))
        }
        (None, None) => default_secret.cloned().ok_or_else(|| {
            format!(
                "no secret: set secret_env or secret_file, or {DEFAULT_SECRET_VAR} for every \
                 subscription"
            )
        })?,
    };
    if secret.expose().is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(checked.with_secret(entry.id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::from_pairs([("CRM_SECRET", "s3cret-crm")])
    }

    fn parse_one(entry: &str) -> Result<Vec<Subscription>, String> {
        parse(
            &format!("{{\"subscriptions\": [{entry}]}}"),
            &env(),
            Some(&Secret::new("fallback")),
        )
    }

    #[test]
    fn a_full_entry_parses_and_filters() {
        let subs = parse_one(
            r#"{"id": "crm", "url": "https://crm.example/hook", "events": ["low_stock", "out_of_stock"],
                "skus": ["A1"], "locations": ["store-1"], "secret_env": "CRM_SECRET"}"#,
        )
        .expect("valid");
        let crm = &subs[0];
        assert_eq!(crm.secret.expose(), "s3cret-crm");
        let a1 = ["A1".to_owned()];
        let store = ["store-1".to_owned()];
        assert!(crm.wants(EventType::LowStock, &a1, &store, &[]));
        assert!(!crm.wants(EventType::BackInStock, &a1, &store, &[]));
        assert!(!crm.wants(EventType::LowStock, &["B2".to_owned()], &store, &[]));
        assert!(!crm.wants(EventType::LowStock, &a1, &["wh".to_owned()], &[]));
        assert!(!crm.wants(EventType::LowStock, &[], &[], &[]));
    }

    #[test]
    fn the_default_secret_and_wildcard_apply() {
        let subs = parse_one(r#"{"id": "all", "url": "http://127.0.0.1:1/x", "events": ["*"]}"#)
            .expect("valid");
        assert_eq!(subs[0].secret.expose(), "fallback");
        assert!(subs[0].wants(EventType::OrderReleased, &[], &[], &[]));
    }

    #[test]
    fn a_channel_filter_takes_only_that_channels_events() {
        let subs = parse_one(
            r#"{"id": "market-feed", "url": "https://m.example/hook",
                "events": ["channel_availability", "channel_oversold"], "channels": ["market"]}"#,
        )
        .expect("valid");
        let feed = &subs[0];
        let sku = ["SNEAKER-42".to_owned()];
        let market = ["market".to_owned()];
        let web = ["web".to_owned()];
        assert!(feed.wants(EventType::ChannelAvailability, &sku, &[], &market));
        assert!(feed.wants(EventType::ChannelOversold, &sku, &[], &market));
        assert!(!feed.wants(EventType::ChannelAvailability, &sku, &[], &web));
        // An event about no channel never matches a channel filter.
        assert!(!feed.wants(EventType::ChannelAvailability, &sku, &[], &[]));
        assert!(!feed.wants(EventType::StockChanged, &sku, &["store-1".to_owned()], &[]));
        // Without a channel filter every channel's quantities go out.
        let all = parse_one(
            r#"{"id": "all", "url": "https://m.example/hook", "events": ["channel_availability"]}"#,
        )
        .expect("valid");
        assert!(all[0].wants(EventType::ChannelAvailability, &sku, &[], &web));
    }

    #[test]
    fn channels_are_checked_as_channel_ids() {
        for (channels, expected) in [
            (r#"[]"#, "channels: leave it out"),
            (r#"[""]"#, "channels: leave it out"),
            (
                r#"["market place"]"#,
                "channels: channel \"market place\" is not a subject token",
            ),
            (
                r#"["a.b"]"#,
                "channels: channel \"a.b\" is not a subject token",
            ),
        ] {
            let entry = format!(
                r#"{{"id": "x", "url": "http://x/y", "events": ["*"], "channels": {channels}}}"#
            );
            let err = parse_one(&entry).expect_err(&entry);
            assert!(
                err.starts_with(&format!("subscription \"x\": {expected}")),
                "{err}"
            );
        }
        let long = "c".repeat(65);
        let entry = format!(
            r#"{{"id": "x", "url": "http://x/y", "events": ["*"], "channels": ["{long}"]}}"#
        );
        let err = parse_one(&entry).expect_err("too long");
        assert!(err.contains("channels: channel is longer than"), "{err}");
    }

    #[test]
    fn errors_name_the_subscription_and_field() {
        let cases = [
            (
                r#"{"id": "a", "url": "ftp://x/y", "events": ["*"]}"#,
                "subscription \"a\": url",
            ),
            (
                r#"{"id": "b", "url": "http://x/y", "events": ["sold"]}"#,
                "subscription \"b\": events: unknown event type \"sold\"",
            ),
            (
                r#"{"id": "c", "url": "http://x/y", "events": []}"#,
                "subscription \"c\": events: empty",
            ),
            (
                r#"{"id": "d e", "url": "http://x/y", "events": ["*"]}"#,
                "subscription \"d e\": id",
            ),
            (
                r#"{"id": "f", "url": "http://x/y", "events": ["*"], "secret_env": "NOPE"}"#,
                "subscription \"f\": secret_env: the variable NOPE is not set",
            ),
            (
                r#"{"id": "g", "url": "http://x/y", "events": ["*"], "sku": ["typo"]}"#,
                "subscription \"g\": unknown field `sku`",
            ),
            (
                r#"{"url": "http://x/y", "events": ["*"]}"#,
                "subscriptions[0]: missing field `id`",
            ),
            (
                r#"{"id": "h", "url": "http://x/y", "events": ["*"], "skus": []}"#,
                "subscription \"h\": skus",
            ),
        ];
        for (entry, expected) in cases {
            let err = parse_one(entry).expect_err(entry);
            assert!(err.starts_with(expected), "{err}");
        }
    }

    #[test]
    fn duplicate_ids_and_missing_secrets_are_refused() {
        let twice = r#"{"subscriptions": [
            {"id": "a", "url": "http://x/1", "events": ["*"]},
            {"id": "a", "url": "http://x/2", "events": ["*"]}]}"#;
        let err = parse(twice, &env(), Some(&Secret::new("s"))).expect_err("twice");
        assert!(
            err.contains("subscription \"a\": id is used twice"),
            "{err}"
        );

        let no_secret = r#"{"subscriptions": [{"id": "a", "url": "http://x/1", "events": ["*"]}]}"#;
        let err = parse(no_secret, &env(), None).expect_err("no secret");
        assert!(err.contains("STOCKFLOW_WEBHOOK_SECRET"), "{err}");
    }

    #[test]
    fn the_file_variable_is_required_and_named() {
        let err = from_env(&Env::from_pairs([])).expect_err("unset");
        assert!(
            err.to_string().starts_with("STOCKFLOW_WEBHOOKS_FILE:"),
            "{err}"
        );
    }
}
