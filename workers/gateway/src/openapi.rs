//! The OpenAPI 3 document, checked in as `openapi.json` and served at `/openapi.json`. The
//! tests below keep it honest: it lists exactly the routes the router serves, and every request
//! example in it is accepted by the gateway's own input parsing.

/// The document.
pub const DOCUMENT: &str = include_str!("../openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;
    use crate::input::{self, OrderAction};

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

    #[test]
    fn the_document_lists_exactly_the_served_routes() {
        let doc = document();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(*method).is_some() {
                    documented.insert((method.to_string(), path.clone()));
                }
            }
        }
        let (_, served) = crate::routes::api_routes();
        let served: BTreeSet<(String, String)> = served
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        assert_eq!(documented, served);
    }

    /// Every `$ref` points at something that exists.
    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, value: &Value) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.strip_prefix('#').expect("local ref");
                        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
                    }
                    map.values().for_each(|v| walk(doc, v));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }

    /// Every `{placeholder}` of a path is a path parameter of each of its operations, and no
    /// operation declares one its path lacks.
    #[test]
    fn every_path_parameter_is_declared() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let placeholders: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for method in METHODS {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|p| match p["$ref"].as_str() {
                        Some(target) => doc
                            .pointer(target.trim_start_matches('#'))
                            .expect("ref resolves"),
                        None => p,
                    })
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert_eq!(declared, placeholders, "{method} {path}");
            }
        }
    }

    /// Every error code the gateway can answer, also for the framework's own rejections, is
    /// one the document's `Error` schema lists.
    #[test]
    fn the_error_schema_lists_every_code() {
        let doc = document();
        let codes: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
            ["enum"]
            .as_array()
            .expect("error codes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for status in 400..600 {
            let status = axum::http::StatusCode::from_u16(status).expect("status");
            let code = crate::error::code_for(status);
            assert!(
                codes.contains(code),
                "{status} answers {code}, not in the document"
            );
        }
    }

    /// Request examples pass the same parsing and validation as real requests.
    #[test]
    fn request_examples_are_accepted() {
        let doc = document();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let Some(op) = item.get("post") else { continue };
            // A POST without a body (replaying a dead letter) has nothing to check.
            if op.get("requestBody").is_none() {
                continue;
            }
            // A CSV import: every example row is a good Shopify item.
            if let Some(csv) = op["requestBody"]["content"]["text/csv"]["examples"].as_object() {
                assert!(!csv.is_empty(), "POST {path} has no CSV example");
                for (name, example) in csv {
                    let text = example["value"].as_str().expect("a CSV text");
                    let (_, refused) = connector::shops::read_items(
                        text.as_bytes(),
                        connector::shops::PlatformKind::Shopify,
                    )
                    .unwrap_or_else(|e| panic!("POST {path} example {name}: {e}"));
                    assert!(
                        refused.is_empty(),
                        "POST {path} example {name}: {refused:?}"
                    );
                    checked += 1;
                }
                continue;
            }
            let examples = op["requestBody"]["content"]["application/json"]["examples"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            assert!(!examples.is_empty(), "POST {path} has no request example");
            for (name, example) in examples {
                let value = example["value"].clone();
                let items = match value {
                    Value::Array(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (Some(i), v))
                        .collect(),
                    one => vec![(None, one)],
                };
                for (index, value) in items {
                    let has_id = value.get("event_id").is_some();
                    let key = (!has_id).then_some("example");
                    let result = match path.as_str() {
                        "/v1/stock/events" => input::stock_fact(value, key, index).map(|_| ()),
                        "/v1/orders" => input::placement(value, key, index).map(|_| ()),
                        "/v1/orders/{order_id}/cancel" => {
                            input::order_action("o-1".into(), OrderAction::Cancel, value, key)
                                .map(|_| ())
                        }
                        "/v1/orders/{order_id}/commit" => {
                            input::order_action("o-1".into(), OrderAction::Commit, value, key)
                                .map(|_| ())
                        }
                        "/v1/orders/{order_id}/fulfil" => {
                            input::order_action("o-1".into(), OrderAction::Fulfil, value, key)
                                .map(|_| ())
                        }
                        "/v1/webhooks" => input::from_value::<notify_worker::registry::Stored>(
                            value,
                        )
                        .and_then(|s| {
                            s.validate()
                                .map_err(|e| crate::error::ApiError::invalid(e.field, e.reason))
                        }),
                        other => panic!("no example check for POST {other}"),
                    };
                    result.unwrap_or_else(|e| panic!("POST {path} example {name}: {e:?}"));
                    checked += 1;
                }
            }
        }
        assert!(checked >= 5);
    }

    /// The PUT examples (a channel, a SKU's rules) pass the same parsing and checks.
    #[test]
    fn put_examples_are_accepted() {
        let doc = document();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let Some(op) = item.get("put") else { continue };
            let examples = op["requestBody"]["content"]["application/json"]["examples"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            assert!(!examples.is_empty(), "PUT {path} has no request example");
            for (name, example) in examples {
                let value = example["value"].clone();
                let result = match path.as_str() {
                    "/v1/channels/{channel}" => crate::channels::check_example("market-1", value),
                    "/v1/channels/{channel}/rules/{sku}" => {
                        crate::channels::check_rules_example("market-1", "SKU-1", value)
                    }
                    "/v1/connectors/{shop}" => {
                        crate::connectors::shop_of("acme", value.to_string().as_bytes()).map(|_| ())
                    }
                    "/v1/connectors/{shop}/items/{sku}" => {
                        crate::connectors::item_of("SKU-1", value.to_string().as_bytes()).and_then(
                            |item| {
                                let platform = if item.product_id.is_some() {
                                    connector::shops::PlatformKind::Woocommerce
                                } else {
                                    connector::shops::PlatformKind::Shopify
                                };
                                connector::shops::check_item(platform, &item)
                                    .map_err(|e| crate::error::ApiError::invalid(e.field, e.reason))
                            },
                        )
                    }
                    other => panic!("no example check for PUT {other}"),
                };
                result.unwrap_or_else(|e| panic!("PUT {path} example {name}: {e:?}"));
                checked += 1;
            }
        }
        assert!(checked >= 2);
    }
}
