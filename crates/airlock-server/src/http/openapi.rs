//! The API document, OpenAPI 3.1 at `GET /v1/openapi.json`: generated from
//! the `airlock-api` types and the handlers' `#[utoipa::path]` attributes,
//! so what it says is what the server reads and writes.

use std::sync::OnceLock;

use airlock_api::ErrorCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::response::{Response as ResponseDoc, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Airlock API",
        description = "Holds sensitive actions until they are approved, then lets exactly that \
                       action through once. Every call but this document's takes an API key \
                       (`Authorization: Bearer …`). Every failure answers \
                       `{\"error\": {\"code\", \"message\"}}`; each code has one status.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::check,
        super::breakglass,
        super::list_requests,
        super::get_request,
        super::review,
        super::cancel,
        super::revoke,
        super::consume,
        super::complete,
        super::audit,
        super::report_findings,
        super::audit_checkpoint,
        super::audit_inclusion,
        super::audit_consistency,
        super::keys,
        super::whoami,
        super::scram_login,
        super::key_live,
        super::outbox,
        super::outbox_retry,
        document,
    ),
    components(
        schemas(airlock_api::ErrorBody, ErrorCode),
        responses(
            Error400, Error401, Error403, Error404, Error405, Error409, Error413, Error429,
            Error502, Error503
        )
    ),
    modifiers(&BearerKeys),
    security(("api_key" = [])),
    tags(
        (name = "decide", description = "Checks and break-glass"),
        (name = "requests", description = "Approval requests and their reviews"),
        (name = "grants", description = "Spending a grant and reporting the outcome"),
        (name = "audit", description = "The tamper-evident log and its proofs"),
        (name = "keys", description = "Callers, keys and public keys"),
        (name = "notifications", description = "The webhook outbox"),
        (name = "meta", description = "This document"),
    )
)]
pub(crate) struct ApiDoc;

/// API keys travel as bearer tokens.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The error response for `status`: the codes sent with it, and the body.
fn error_response(status: u16) -> RefOr<ResponseDoc> {
    let codes: Vec<String> = ErrorCode::ALL
        .iter()
        .filter(|c| **c != ErrorCode::Unknown && c.status() == status)
        .map(|c| format!("`{c}`"))
        .collect();
    let mut res = ResponseBuilder::new()
        .description(format!("`error.code` is one of {}", codes.join(", ")))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        );
    if status == 429 {
        res = res.header(
            "Retry-After",
            HeaderBuilder::new()
                .description(Some(
                    "Seconds until a check (`rate_limited`) or a reviewer's TOTP code \
                     (`too_many_attempts`) is accepted again",
                ))
                .build(),
        );
    }
    res.build().into()
}

macro_rules! error_responses {
    ($($name:ident = $status:literal),* $(,)?) => {$(
        #[doc = concat!("The ", stringify!($status), " answers.")]
        pub(crate) struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<ResponseDoc>) {
                (stringify!($name), error_response($status))
            }
        }
    )*};
}

error_responses!(
    Error400 = 400,
    Error401 = 401,
    Error403 = 403,
    Error404 = 404,
    Error405 = 405,
    Error409 = 409,
    Error413 = 413,
    Error429 = 429,
    Error502 = 502,
    Error503 = 503,
);

/// The document as served, built once.
pub(crate) fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        // The document is built from static attributes; serializing a
        // tree of strings and maps cannot fail, and an empty body would
        // show at once in the tests.
        ApiDoc::openapi().to_pretty_json().unwrap_or_default()
    })
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    summary = "This document (OpenAPI 3.1); no key needed",
    security(()),
    responses((status = 200, description = "The document", content_type = "application/json")))]
pub(super) async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_str(json()).unwrap()
    }

    /// Every `/v1` route the router serves, with its methods, read from
    /// the router itself (its `Debug` form: the route table axum holds),
    /// so a route added anywhere (the API, the console, chat callbacks)
    /// is seen.
    fn served_routes(router: &axum::Router) -> BTreeMap<String, BTreeSet<String>> {
        let text = format!("{router:?}");
        // The first `PathRouter` is the routes; the fallback router follows.
        let table = &text[..text.find("fallback_router").unwrap()];
        let (routes, paths) = table.split_at(table.find("node: Node").unwrap());
        let mut methods = BTreeMap::new();
        for item in routes.split("RouteId(").skip(1) {
            let id: u32 = item[..item.find(')').unwrap()].parse().unwrap();
            if let Some(at) = item.find("allow_header: Bytes(b\"") {
                let rest = &item[at + 22..];
                let allow = &rest[..rest.find('"').unwrap()];
                methods.insert(id, allow.to_owned());
            }
        }
        let mut out = BTreeMap::new();
        for item in paths.split("RouteId(").skip(1) {
            let id: u32 = item[..item.find(')').unwrap()].parse().unwrap();
            let rest = &item[item.find('"').unwrap() + 1..];
            let path = &rest[..rest.find('"').unwrap()];
            if !path.starts_with("/v1/") {
                continue;
            }
            let allow = methods
                .get(&id)
                .unwrap_or_else(|| panic!("no methods read for {path}"));
            let set = allow
                .split(',')
                .filter(|m| *m != "HEAD")
                .map(str::to_lowercase)
                .collect();
            out.insert(path.to_owned(), set);
        }
        out
    }

    fn documented_routes() -> BTreeMap<String, BTreeSet<String>> {
        let doc = doc();
        doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(path, ops)| {
                let methods = ops.as_object().unwrap().keys().cloned().collect();
                (path.clone(), methods)
            })
            .collect()
    }

    async fn full_router() -> (axum::Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(
            dir.path().join("policies/main.cedar"),
            "permit(principal, action, resource);",
        )
        .unwrap();
        let cfg = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[policy]\ndir = \"policies\"\n",
            dir.path().join("data").display().to_string()
        );
        let path = dir.path().join("airlock.toml");
        std::fs::write(&path, cfg).unwrap();
        let config = crate::Config::load(&path).unwrap();
        let (airlock, _bg) = crate::Airlock::start(config).await.unwrap();
        (super::super::router(airlock), dir)
    }

    #[tokio::test]
    async fn every_served_route_is_in_the_document() {
        let (router, _dir) = full_router().await;
        let served = served_routes(&router);
        // The table was read: a change in how axum prints it fails here,
        // not as a silent pass.
        assert!(served.len() >= 20, "read only {served:?}");
        let documented = documented_routes();
        for (path, methods) in &served {
            let doc = documented
                .get(path)
                .unwrap_or_else(|| panic!("{path} is served but not in /v1/openapi.json"));
            for m in methods {
                assert!(
                    doc.contains(m),
                    "{} {path} is served but not in /v1/openapi.json",
                    m.to_uppercase()
                );
            }
        }
        // And nothing is documented that is not served.
        for (path, methods) in &documented {
            let served = served
                .get(path)
                .unwrap_or_else(|| panic!("{path} is documented but not served"));
            assert_eq!(methods, served, "{path}");
        }
    }

    #[test]
    fn the_route_reader_sees_a_route_the_document_lacks() {
        // The check above would catch an undocumented route: shown here
        // with one, so the reader is known to work.
        let router: axum::Router = axum::Router::new()
            .route("/v1/check", axum::routing::post(|| async {}))
            .route(
                "/v1/secret",
                axum::routing::get(|| async {}).delete(|| async {}),
            );
        let served = served_routes(&router);
        assert_eq!(served["/v1/check"], BTreeSet::from(["post".to_owned()]));
        assert_eq!(
            served["/v1/secret"],
            BTreeSet::from(["get".to_owned(), "delete".to_owned()])
        );
        assert!(!documented_routes().contains_key("/v1/secret"));
    }

    /// A query value the document allows is one the server takes: a
    /// generated client (or schemathesis) sending `limit=0`, `seq=0` or
    /// `wait=-1` would get a 400 the document did not announce.
    #[test]
    fn query_bounds_are_the_servers() {
        let doc = doc();
        let param = |path: &str, name: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{name} of {path}"))["schema"]
                .clone()
        };
        for path in ["/v1/requests", "/v1/audit", "/v1/outbox"] {
            assert_eq!(param(path, "limit")["minimum"], 1, "{path}");
        }
        assert_eq!(param("/v1/requests/{id}", "wait")["minimum"], 0);
        assert_eq!(param("/v1/audit", "after")["minimum"], 0);
        for (path, name) in [
            ("/v1/audit/proof/inclusion", "seq"),
            ("/v1/audit/proof/inclusion", "size"),
            ("/v1/audit/proof/consistency", "from"),
            ("/v1/audit/proof/consistency", "to"),
        ] {
            assert_eq!(param(path, name)["minimum"], 1, "{name} of {path}");
        }
    }

    #[test]
    fn it_is_openapi_3_1_with_every_error_code() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        let responses = doc["components"]["responses"].as_object().unwrap();
        let described: String = responses
            .values()
            .map(|r| r["description"].as_str().unwrap().to_owned())
            .collect();
        for code in ErrorCode::ALL {
            if code != ErrorCode::Unknown {
                assert!(
                    described.contains(&format!("`{code}`")),
                    "{code} in no error response"
                );
            }
        }
        let enumerated = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(enumerated, ErrorCode::ALL.len() - 1);
        // Every operation but this document's needs a key.
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let open = op["security"] == serde_json::json!([{}]);
                assert_eq!(open, path == "/v1/openapi.json", "{method} {path}");
                assert!(op["responses"]["200"].is_object(), "{method} {path}");
            }
        }
    }
}
