//! The HTTP proxy's route matcher, differential: a path template (from the
//! input) compiled by `Routes`, and a request path (from the input)
//! matched by it and by a regular expression built from the same template
//! (`{name}` → a lazy `[^/]+?`), must agree on whether it matches and on
//! the resource built from the captures. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

use airlock_proxy_http::{Routes, RouteConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.splitn(3, '\n');
    let (Some(template), Some(path)) = (lines.next(), lines.next()) else { return };
    let method = lines.next().unwrap_or("GET");
    // The captures the template names, in order, for the resource.
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        let Some(end) = rest[i..].find('}') else { break };
        names.push(rest[i + 1..i + end].to_owned());
        rest = &rest[i + end + 1..];
    }
    let resource = format!(
        "Doc:x{}",
        names.iter().map(|n| format!("{{{n}}}")).collect::<Vec<_>>().join("-")
    );
    let config: RouteConfig = match serde_json::from_value(serde_json::json!({
        "method": "GET", "path": template, "action": "download", "resource": resource,
    })) {
        Ok(c) => c,
        Err(_) => return,
    };
    let Ok(routes) = Routes::compile(&[config]) else { return };
    let got = routes
        .find(method, path)
        .map(|m| (m.kind.as_str().to_owned(), m.id.as_str().to_owned()));

    // The reference: the template as an anchored regular expression.
    let mut pattern = String::from("^");
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        pattern.push_str(&regex::escape(&rest[..i]));
        let end = rest[i..].find('}').unwrap_or(0);
        pattern.push_str("([^/]+?)");
        rest = &rest[i + end + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    let re = regex::Regex::new(&pattern).unwrap();
    let want = if method.eq_ignore_ascii_case("GET") {
        re.captures(path).and_then(|c| {
            let ids: Vec<&str> = (1..c.len()).map(|i| c.get(i).map_or("", |m| m.as_str())).collect();
            let id = format!("x{}", ids.join("-"));
            airlock_core::action::parse_type_id(&format!("Doc:{id}"))
                .ok()
                .map(|(k, i)| (k.as_str().to_owned(), i.as_str().to_owned()))
        })
    } else {
        None
    };
    assert_eq!(got, want, "template {template:?}, path {path:?}, pattern {pattern:?}");
});
