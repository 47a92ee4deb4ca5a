//! The console: a single page for the people who run the stores and the shop, served under
//! `/console` from files embedded in the binary (`workers/gateway/console/`). Plain HTML, a
//! JavaScript module and CSS, no build step: the page is a client of the API like any other,
//! signed in with a bearer token it keeps in the tab's `sessionStorage` and sends in the
//! `Authorization` header, also for the live streams (read with `fetch`, not `EventSource`,
//! so no token ever travels in a URL).
//!
//! [`api`] holds the few API routes the console added (`/v1/whoami`, a SKU's channels
//! and live changes, alerts live); they are in the OpenAPI document like every other.

pub(crate) mod api;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};

use crate::AppState;

/// The page: nothing but its own files, no inline script or style, no framing, no form posts;
/// it talks only to the gateway that served it.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file and its content type.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

static INDEX: Asset = Asset {
    body: include_str!("../../console/index.html"),
    content_type: "text/html; charset=utf-8",
};
static APP_JS: Asset = Asset {
    body: include_str!("../../console/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
static APP_CSS: Asset = Asset {
    body: include_str!("../../console/app.css"),
    content_type: "text/css; charset=utf-8",
};
static ICON: Asset = Asset {
    body: include_str!("../../console/icon.svg"),
    content_type: "image/svg+xml",
};

impl IntoResponse for &'static Asset {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::OK, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        // Embedded in the binary: a new gateway version is a new page, so it is revalidated.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

/// `/console` (redirected to `/console/`), `/console/` and its files. No token is needed for
/// the files: they hold nothing but the page; every fact comes from the API with the token.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(|| async { &INDEX }))
        .route("/console/app.js", get(|| async { &APP_JS }))
        .route("/console/app.css", get(|| async { &APP_CSS }))
        .route("/console/icon.svg", get(|| async { &ICON }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for (name, text) in [("index.html", INDEX.body), ("app.js", APP_JS.body)] {
            // The one URL is SVG's namespace name, which nothing loads.
            let elsewhere = text
                .replace("http://www.w3.org/2000/svg", "")
                .contains("://");
            assert!(!elsewhere, "{name} loads nothing from elsewhere");
        }
        assert!(
            !INDEX.body.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
        assert!(
            !INDEX.body.contains("style="),
            "no inline style (the CSP forbids it)"
        );
        assert!(INDEX
            .body
            .contains(r#"<script type="module" src="app.js"></script>"#));
    }
}
