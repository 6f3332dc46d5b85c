//! Routes: a method and a path template with captures, compiled once, that
//! turn a request into an action on a `TYPE:ID` resource.

use std::collections::BTreeMap;

use airlock_core::action::parse_type_id;
use airlock_core::action::{ResourceId, ResourceType};
use airlock_core::ActionName;

use crate::config::RouteConfig;
use crate::ProxyError;

/// One piece of a path segment.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Cap(String),
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    method: Option<String>,
    segments: Vec<Vec<Part>>,
    /// The action checked.
    pub action: ActionName,
    /// The resource type, written out in the route (never from a capture).
    kind: ResourceType,
    /// The id template: what follows `TYPE:`, captures to fill.
    id: String,
    /// The route's settings.
    pub config: RouteConfig,
    /// `bind_headers`, parsed.
    pub bind_headers: Vec<hyper::header::HeaderName>,
}

/// A request matched to a route: the action and resource it is.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Route,
    /// Resource type.
    pub kind: ResourceType,
    /// Resource id.
    pub id: ResourceId,
}

fn parse_segment(seg: &str, names: &mut Vec<String>) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = seg;
    while !rest.is_empty() {
        match rest.find('{') {
            None => {
                if rest.contains('}') {
                    return Err(format!("unbalanced '}}' in {seg:?}"));
                }
                parts.push(Part::Lit(rest.to_owned()));
                rest = "";
            }
            Some(i) => {
                if i > 0 {
                    let lit = &rest[..i];
                    if lit.contains('}') {
                        return Err(format!("unbalanced '}}' in {seg:?}"));
                    }
                    parts.push(Part::Lit(lit.to_owned()));
                }
                let after = &rest[i + 1..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' in {seg:?}"))?;
                let name = &after[..end];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("bad capture name {name:?}"));
                }
                if matches!(parts.last(), Some(Part::Cap(_))) {
                    return Err(format!("two captures side by side in {seg:?}"));
                }
                if names.iter().any(|n| n == name) {
                    return Err(format!("capture {name:?} appears twice"));
                }
                names.push(name.to_owned());
                parts.push(Part::Cap(name.to_owned()));
                rest = &after[end + 1..];
            }
        }
    }
    Ok(parts)
}

/// Matches `text` against `parts`, filling `caps`; a capture takes one or
/// more characters (shortest first, so a literal after it anchors it).
fn match_parts(parts: &[Part], text: &str, caps: &mut BTreeMap<String, String>) -> bool {
    match parts.split_first() {
        None => text.is_empty(),
        Some((Part::Lit(l), rest)) => {
            text.starts_with(l.as_str()) && match_parts(rest, &text[l.len()..], caps)
        }
        Some((Part::Cap(name), rest)) => {
            for i in (1..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                if match_parts(rest, &text[i..], caps) {
                    caps.insert(name.clone(), text[..i].to_owned());
                    return true;
                }
            }
            false
        }
    }
}

impl Route {
    /// Compiles a route, checking that its action and resource can be
    /// built from its captures.
    pub fn compile(config: &RouteConfig) -> Result<Self, ProxyError> {
        let bad = |m: String| ProxyError::Config(format!("route {:?}: {m}", config.path));
        let method = match config.method.trim() {
            "*" => None,
            m if !m.is_empty() && m.chars().all(|c| c.is_ascii_alphabetic()) => {
                Some(m.to_ascii_uppercase())
            }
            m => return Err(bad(format!("method {m:?} is not a method or \"*\""))),
        };
        let Some(path) = config.path.strip_prefix('/') else {
            return Err(bad("path must start with '/'".into()));
        };
        let mut names = Vec::new();
        let segments = path
            .split('/')
            .map(|s| parse_segment(s, &mut names))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let action = ActionName::parse(&config.action).map_err(|e| bad(e.to_string()))?;
        // Every capture the resource names must exist.
        let mut used = Vec::new();
        parse_segment(&config.resource, &mut used).map_err(bad)?;
        if let Some(u) = used.iter().find(|u| !names.contains(u)) {
            return Err(bad(format!(
                "resource uses {{{u}}}, which the path does not capture"
            )));
        }
        // The resource must be TYPE:ID once its captures are filled, and
        // its type the route's own: a capture there would let the client
        // choose what kind of thing policy thinks it is asking for.
        let sample = used.iter().fold(config.resource.clone(), |r, u| {
            r.replace(&format!("{{{u}}}"), "x")
        });
        let (kind, _) = parse_type_id(&sample)
            .map_err(|e| bad(format!("resource {:?}: {e}", config.resource)))?;
        let Some(id) = config.resource.strip_prefix(&format!("{}:", kind.as_str())) else {
            return Err(bad(format!(
                "resource {:?}: its type must be written out, not captured",
                config.resource
            )));
        };
        let id = id.to_owned();
        if let Some(r) = &config.response_action {
            ActionName::parse(r).map_err(|e| bad(e.to_string()))?;
            // A decision on the response needs its finding counts: with
            // DLP off it would be skipped, and the response let through.
            if config.response_dlp == crate::config::ResponseDlp::Off {
                return Err(bad(
                    "response_action needs response_dlp (report, mask or block), or it would never be decided"
                        .into(),
                ));
            }
        }
        let bind_headers = config
            .bind_headers
            .iter()
            .map(|h| {
                hyper::header::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| bad(format!("bind_headers: {h:?} is not a header name")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            method,
            segments,
            action,
            kind,
            id,
            config: config.clone(),
            bind_headers,
        })
    }

    /// Whether `method` and `path` (the raw, still percent-encoded path)
    /// match; the captures if so.
    fn captures(&self, method: &str, path: &str) -> Option<BTreeMap<String, String>> {
        if let Some(m) = &self.method {
            if !m.eq_ignore_ascii_case(method) {
                return None;
            }
        }
        let path = path.strip_prefix('/')?;
        let segs: Vec<&str> = path.split('/').collect();
        if segs.len() != self.segments.len() {
            return None;
        }
        let mut caps = BTreeMap::new();
        for (parts, seg) in self.segments.iter().zip(segs) {
            if !match_parts(parts, seg, &mut caps) {
                return None;
            }
        }
        // The upstream decodes `%XX` before it looks the name up, so the
        // resource is named decoded: `q3%20report` is `q3 report` to policy
        // as to the upstream, one id per resource. (`ambiguous_path` has
        // refused encodings that need no encoding and ones that do not
        // decode to text, before any route was tried.)
        for v in caps.values_mut() {
            if v.contains('%') {
                *v = percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .ok()?
                    .into_owned();
            }
        }
        Some(caps)
    }

    /// The resource: the route's own type, and the id with the captures
    /// filled in. The id is never read for a type again, so a capture
    /// holding `:` (`/exports/:Admin:x.csv`) stays part of the id.
    fn resource_for(&self, caps: &BTreeMap<String, String>) -> Option<(ResourceType, ResourceId)> {
        let mut out = String::new();
        let mut rest = self.id.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let end = after.find('}')?;
            out.push_str(caps.get(&after[..end])?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some((self.kind.clone(), ResourceId::parse(&out).ok()?))
    }
}

/// The routes of one proxy, in order.
#[derive(Debug, Clone)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// Compiles every route.
    pub fn compile(configs: &[RouteConfig]) -> Result<Self, ProxyError> {
        configs
            .iter()
            .map(Route::compile)
            .collect::<Result<_, _>>()
            .map(Routes)
    }

    /// The first route that matches, with its resource. A route whose
    /// resource cannot be built from this path (an id Airlock refuses) does
    /// not match: the request is refused rather than checked as something
    /// else.
    pub fn find(&self, method: &str, path: &str) -> Option<Matched<'_>> {
        for route in &self.0 {
            if let Some(caps) = route.captures(method, path) {
                let (kind, id) = route.resource_for(&caps)?;
                return Some(Matched { route, kind, id });
            }
        }
        None
    }
}

/// Paths the upstream could read as something else than what was
/// matched: dot segments, encoded separators and dots, back-slashes, `;`
/// path parameters (servlet containers drop `;…` from a segment before
/// they look it up, so `secret.csv;x` would be `secret.csv` there),
/// percent-encoded characters that never need encoding (`secre%74`: a
/// route's literal parts are matched as sent, so `/exp%6frts/` would miss
/// the route meant for it and could meet a catch-all), an encoded `%`
/// (`%252e` is `%2e` to an upstream that decodes twice) or `;`, and
/// encodings that do not decode to UTF-8, and characters that
/// compatibility normalisation (NFKC, which some servers and file systems
/// apply) or a best-fit mapping turns into others (`%EF%BC%8F`, a
/// fullwidth solidus: `/admin／x` is one segment here and two there).
/// They are refused before matching rather than normalised, so the proxy
/// and the upstream cannot disagree on which file is meant.
pub fn ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let needless = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
    let bytes = path.as_bytes();
    let encoded_needlessly = (0..bytes.len()).any(|i| {
        bytes[i] == b'%'
            && bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_some_and(needless)
    });
    lower.contains('\\')
        || lower.contains(';')
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%25")
        || lower.contains("%3b")
        || lower.contains("%00")
        || encoded_needlessly
        || percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .map_or(true, |text| text.chars().any(reads_as_another))
        || path.split('/').any(|s| s == "." || s == "..")
}

/// A character outside ASCII that some upstream could read as another:
/// one that compatibility normalisation (NFKC) changes (fullwidth and
/// small forms, ligatures, `ſ`: `%EF%BD%93ecret.csv` is `secret.csv` to
/// an upstream that normalises, and a forbid on `secret.csv` would not
/// have seen it), and those Windows' best-fit code pages turn into `/` or
/// `\` (the division and fraction slashes; `¥` and `₩` under the Japanese
/// and Korean code pages, where a path of `..¥..¥x` climbs).
fn reads_as_another(c: char) -> bool {
    use unicode_normalization::UnicodeNormalization;
    !c.is_ascii()
        && (matches!(
            c,
            '\u{2215}' | '\u{2044}' | '\u{29F8}' | '\u{2216}' | '\u{00A5}' | '\u{20A9}'
        ) || !std::iter::once(c).nfkc().eq(std::iter::once(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str, resource: &str) -> RouteConfig {
        RouteConfig {
            method: method.into(),
            path: path.into(),
            action: "download".into(),
            resource: resource.into(),
            response_dlp: Default::default(),
            response_action: None,
            danger_forward_unchecked: false,
            danger_body_unseen: false,
            bind_headers: Vec::new(),
        }
    }

    #[test]
    fn bind_headers_must_be_header_names() {
        let mut r = route("POST", "/t/{name}", "Doc:{name}");
        r.bind_headers = vec!["X-Tenant-Id".into()];
        let compiled = Route::compile(&r).unwrap();
        assert_eq!(compiled.bind_headers[0].as_str(), "x-tenant-id");
        r.bind_headers = vec!["x tenant".into()];
        let e = Route::compile(&r).unwrap_err().to_string();
        assert!(e.contains("bind_headers"), "{e}");
    }

    #[test]
    fn templates_capture_and_build_the_resource() {
        let r = Routes::compile(&[
            route("GET", "/exports/{name}.csv", "File:{name}"),
            route("*", "/t/{schema}/{table}", "Table:{schema}.{table}"),
        ])
        .unwrap();
        let m = r.find("GET", "/exports/customers.csv").unwrap();
        assert_eq!((m.kind.as_str(), m.id.as_str()), ("File", "customers"));
        let m = r.find("get", "/exports/a.b.csv").unwrap();
        assert_eq!(m.id.as_str(), "a.b");
        assert!(r.find("POST", "/exports/customers.csv").is_none());
        assert!(r.find("GET", "/exports/.csv").is_none());
        assert!(r.find("GET", "/exports/x.json").is_none());
        assert!(r.find("GET", "/exports/x.csv/more").is_none());
        let m = r.find("DELETE", "/t/prod/orders").unwrap();
        assert_eq!((m.kind.as_str(), m.id.as_str()), ("Table", "prod.orders"));
    }

    /// A percent-encoded character names the resource the upstream will
    /// serve (`q3%20report` is `q3 report`); a capture holding `:` stays
    /// in the id, never choosing the type; control characters match
    /// nothing.
    #[test]
    fn captures_are_named_as_the_upstream_decodes_them() {
        let r = Routes::compile(&[route("GET", "/exports/{name}.csv", "File:{name}")]).unwrap();
        let m = r.find("GET", "/exports/q3%20report.csv").unwrap();
        assert_eq!(m.id.as_str(), "q3 report");
        let m = r.find("GET", "/exports/caf%C3%A9.csv").unwrap();
        assert_eq!(m.id.as_str(), "café");
        let m = r.find("GET", "/exports/:Admin:secret.csv").unwrap();
        assert_eq!((m.kind.as_str(), m.id.as_str()), ("File", ":Admin:secret"));
        let m = r.find("GET", "/exports/%3AAdmin%3Asecret.csv").unwrap();
        assert_eq!((m.kind.as_str(), m.id.as_str()), ("File", ":Admin:secret"));
        assert!(
            r.find("GET", "/exports/%0a.csv").is_none(),
            "control characters"
        );
    }

    #[test]
    fn bad_routes_are_refused_at_load() {
        for (m, p, res) in [
            ("GET", "exports", "File:x"),
            ("GET", "/e/{a}{b}", "File:{a}"),
            ("GET", "/e/{a}", "File:{b}"),
            ("G T", "/e/{a}", "File:{a}"),
            ("GET", "/e/{a", "File:{a}"),
            ("GET", "/e/{a}/{a}", "File:{a}"),
            ("GET", "/e/{a}", "File"),
            ("GET", "/e/{a}", ":{a}"),
            ("GET", "/e/{a}", "File:"),
            ("GET", "/e/{a}", "Bad Type:{a}"),
            ("GET", "/e/{t}/{a}", "{t}:{a}"),
            ("GET", "/e/{t}/{a}", "Db::{t}:{a}"),
        ] {
            assert!(
                Routes::compile(&[route(m, p, res)]).is_err(),
                "{m} {p} {res}"
            );
        }
        let mut decided = route("GET", "/e/{a}", "File:{a}");
        decided.response_action = Some("download.response".into());
        assert!(Routes::compile(&[decided.clone()]).is_err(), "DLP off");
        decided.response_dlp = crate::config::ResponseDlp::Report;
        assert!(Routes::compile(&[decided]).is_ok());
    }

    #[test]
    fn ambiguous_paths_are_spotted() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a%2Fb",
            "/a\\b",
            "/a%5cb",
            "/exports/secret.csv;x",
            "/exports;x/secret.csv",
            "/exports/secre%74.csv",
            "/exp%6Frts/secret.csv",
            "/exports/%252e%252e/x",
            "/exports/a%3bx.csv",
            "/exports/%ff%fe.csv",
            "/exports/a%7e.csv",
            "/admin%EF%BC%8Fx",
            "/exports/%EF%BC%8E%EF%BC%8E/x",
            "/exports/a%EF%B9%92csv",
            "/exports/a%E2%88%95b",
            "/exports/a%EF%BC%BCb",
            "/exports/a%EF%BC%85b",
            "/exports/%EF%BD%93ecret.csv",
            "/exports/%C5%BFecret.csv",
            "/exports/%EF%AC%81le.csv",
            "/exports/..%C2%A5..%C2%A5admin.cfg",
            "/exports/a%E2%82%A9b",
            "/exports/a%E2%88%96b",
            "/exports/a%E2%80%A6b",
        ] {
            assert!(ambiguous_path(p), "{p}");
        }
        assert!(!ambiguous_path("/exports/a.b.csv"));
        assert!(!ambiguous_path("/exports/q3%20report.csv"));
        assert!(!ambiguous_path("/exports/caf%C3%A9.csv"));
        assert!(!ambiguous_path("/exports/%3Aa.csv"));
        // Letters outside ASCII that no normalisation changes name files
        // as before; decomposed accents too (each character is its own NFKC).
        assert!(!ambiguous_path("/exports/%E8%A1%8C%E6%95%B0.csv"));
        assert!(!ambiguous_path("/exports/e%CC%81t%C3%A9.csv"));
        assert!(!ambiguous_path(
            "/exports/%D0%BE%D1%82%D1%87%D0%B5%D1%82.csv"
        ));
    }
}
