//! The page's files, embedded in the binary, and how they are served:
//! the right content type, `nosniff`, a cache lifetime, and a
//! `Content-Security-Policy` that lets nothing load or run that does not
//! come from this origin (no inline script, no `eval`, no framing).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file.
pub struct Asset {
    /// Its name under `/assets/` (`index.html` is served at `/`).
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every file of the page: what a browser loads for it is the sum of these.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "tables.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/tables.js"),
    },
    Asset {
        name: "chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/chart.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/icon.svg"),
    },
    Asset {
        name: "format.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/format.js"),
    },
];

/// What the page may load: its own files and API, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page. Not cached, so a new collector's page is seen at once.
pub async fn index() -> Response {
    match ASSETS.iter().find(|a| a.name == "index.html") {
        Some(asset) => serve(asset, "no-cache"),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "index.html not embedded\n",
        )
            .into_response(),
    }
}

/// `GET /assets/{name}`: one of [`ASSETS`], or 404.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS
        .iter()
        .find(|a| a.name == name && a.name != "index.html")
    {
        // Short: the files change with the collector's version, and their
        // names do not.
        Some(asset) => serve(asset, "public, max-age=300"),
        None => (
            StatusCode::NOT_FOUND,
            format!("404 page not found: /assets/{name}\n"),
        )
            .into_response(),
    }
}

fn serve(asset: &Asset, cache: &'static str) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
