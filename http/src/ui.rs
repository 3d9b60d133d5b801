//! The web front end on `api.listen` (SPEC §6): a handful of static files compiled into the
//! binary, so that nothing has to be built or installed beside it. The pages are plain ES
//! modules that read the same JSON API as the bank's systems; they live in `http/assets/`,
//! one file per page or component.
//!
//! Every file is served with its content type, a strong `ETag` (its SHA-256) and
//! `Cache-Control: no-cache`, so a browser revalidates and gets a 304 until sipedge is
//! upgraded. The Content-Security-Policy allows scripts, styles and connections from this
//! origin only: no inline script, no third-party origin, no framing.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::json_error;

/// What every front-end response carries: everything from this origin only, nothing inline
/// (the pages build their elements through the DOM, and the chart is SVG elements), and no
/// page may frame this one.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One file of `http/assets/`.
struct Asset {
    /// The name under `/assets/`.
    name: &'static str,
    /// `Content-Type`, with the charset for text.
    content_type: &'static str,
    /// The file, compiled in.
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the front end; `index.html` is also `/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("events.js", JS),
    asset!("format.js", JS),
    asset!("i18n.js", JS),
    asset!("live.js", JS),
    asset!("query.js", JS),
    asset!("chart.js", JS),
    asset!("log.js", JS),
    asset!("monitor.js", JS),
    asset!("cluster.js", JS),
];

/// The quoted ETag of each asset, in [`ASSETS`] order, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            format!("\"{}\"", hex::encode(&digest[..12]))
        })
        .collect()
});

/// The routes of the front end: `/` and `/assets/{file}`. No fallback: the API router owns it.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/assets/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, &headers)
            }),
        )
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some((asset, etag)) = ASSETS
        .iter()
        .zip(ETAGS.iter())
        .find(|(a, _)| a.name == name)
    else {
        return json_error(StatusCode::NOT_FOUND, "no such file in the web front end");
    };
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = asset.body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header_of(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// (path, expected status, expected content type prefix)
    async fn check(path: &str, status: StatusCode, content_type: &str) {
        let response = get(path, None).await;
        assert_eq!(response.status(), status, "{path}");
        assert!(
            header_of(&response, header::CONTENT_TYPE).starts_with(content_type),
            "{path}: {:?}",
            response.headers()
        );
        if status == StatusCode::OK {
            assert_eq!(
                header_of(&response, header::CONTENT_SECURITY_POLICY),
                CSP,
                "{path}"
            );
            assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");
            assert_eq!(
                header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
                "nosniff"
            );
        }
    }

    #[tokio::test]
    async fn paths_table() {
        check("/", StatusCode::OK, "text/html").await;
        check("/assets/index.html", StatusCode::OK, "text/html").await;
        check("/assets/app.css", StatusCode::OK, "text/css").await;
        check("/assets/live.js", StatusCode::OK, "text/javascript").await;
        check("/assets/favicon.svg", StatusCode::OK, "image/svg+xml").await;
        check("/assets/nope.js", StatusCode::NOT_FOUND, "application/json").await;
        check(
            "/assets/..%2Fsrc%2Fui.rs",
            StatusCode::NOT_FOUND,
            "application/json",
        )
        .await;
    }

    #[tokio::test]
    async fn a_matching_etag_gets_304_and_another_gets_the_file() {
        let first = get("/assets/app.js", None).await;
        let etag = header_of(&first, header::ETAG).to_owned();
        assert!(etag.starts_with('"') && etag.len() == 26, "{etag}");
        let again = get("/assets/app.js", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header_of(&again, header::ETAG), etag);
        let list = format!("\"other\", {etag}");
        assert_eq!(
            get("/assets/app.js", Some(&list)).await.status(),
            StatusCode::NOT_MODIFIED
        );
        let stale = get("/assets/app.js", Some("\"other\"")).await;
        assert_eq!(stale.status(), StatusCode::OK);
    }

    /// A file added to `http/assets/` but not to [`ASSETS`] would be a broken page.
    #[test]
    fn every_file_in_the_assets_folder_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut served: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        served.sort();
        assert_eq!(on_disk, served);
    }

    /// An alarm kind without a label would show its raw name in the monitor page.
    #[test]
    fn every_alarm_kind_has_a_label_in_both_languages() {
        let i18n = ASSETS.iter().find(|a| a.name == "i18n.js").unwrap();
        let text = std::str::from_utf8(i18n.body).unwrap();
        for kind in sipedge_store::AlarmKind::ALL {
            let key = format!("'kind.{}':", kind.as_str());
            assert_eq!(text.matches(&key).count(), 2, "{key} in zh and en");
        }
    }

    /// Every `/assets/…` or `./…js` reference in the pages names a served file.
    #[test]
    fn references_between_files_resolve() {
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            for (marker, end) in [("/assets/", '"'), ("from './", '\'')] {
                for part in text.split(marker).skip(1) {
                    let name = part.split(end).next().unwrap();
                    assert!(
                        ASSETS.iter().any(|a| a.name == name),
                        "{} refers to {name:?}, which is not served",
                        asset.name
                    );
                }
            }
        }
    }
}
