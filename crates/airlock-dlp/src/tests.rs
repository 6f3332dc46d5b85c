//! The scanner's tests: detectors and look-alikes, streaming across chunk
//! boundaries, masking, configured detectors, and precision/recall on the
//! generated corpus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::corpus;
use crate::{Config, CustomPattern, Dictionary, Finding, Kind, Scanner, WINDOW};

fn scanner() -> Scanner {
    Scanner::new(&Config::default()).unwrap()
}

/// (type, text) of every finding.
fn found(s: &Scanner, text: &str) -> Vec<(String, String)> {
    s.scan(text.as_bytes())
        .into_iter()
        .map(|f| {
            (
                f.kind.as_str().to_owned(),
                text[f.start as usize..f.end as usize].to_owned(),
            )
        })
        .collect()
}

fn one(kind: &str, value: &str) -> Vec<(String, String)> {
    vec![(kind.to_owned(), value.to_owned())]
}

fn jwt(header: &str, payload: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2lnbmF0dXJlX2J5dGVz",
        e.encode(header),
        e.encode(payload)
    )
}

// Secrets are assembled at run time so the source holds no token-shaped
// literal for secret scanners to trip on.
fn cat(parts: &[&str]) -> String {
    parts.concat()
}

/// What JSON writers escape inside strings hides nothing: a private key
/// with its line breaks written `\n` (a cloud service account's key file),
/// a URL with its slashes written `\/` (PHP's `json_encode`), an `@`
/// written `\u0040`.
#[test]
fn secrets_inside_json_strings_are_found() {
    let s = scanner();
    let line = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";
    let pem = format!("-----BEGIN PRIVATE KEY-----\\n{line}\\n{line}\\n-----END PRIVATE KEY-----");
    let doc =
        format!("{{\"type\": \"service_account\", \"private_key\": \"{pem}\\n\", \"id\": \"1\"}}");
    assert_eq!(found(&s, &doc), one("private_key", &pem));
    assert_eq!(
        found(
            &s,
            r#"{"db":"postgres:\/\/admin:s3cretPass@db.internal:5432\/app"}"#
        ),
        one("url_password", "s3cretPass")
    );
    assert_eq!(
        found(&s, r#"{"to":"bob\u0040example.com"}"#),
        one("email", r"bob\u0040example.com")
    );
    // The user of an escaped URL is not an address either.
    assert_eq!(found(&s, r#"{"u":"https:\/\/bob@example.com\/x"}"#), vec![]);
    // Masked in place, the JSON stays JSON of the same length.
    let escaped = format!(
        "{{\"k\": \"{pem}\", \"to\": \"bob\\u0040example.com\", \"db\": \"postgres:\\/\\/a:s3cretPass@db\"}}"
    );
    // A card written as a JSON number stays a number.
    let numbers =
        r#"{"n": 4111111111111111, "m": [1, -378282246310005], "ssn": 123456789}"#.to_owned();
    let (out, _) = masked(&s, numbers.as_bytes(), &[9]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        r#"{"n": 9999999999991111, "m": [1, -999999999990005], "ssn": 999999999}"#
    );
    for doc in [&doc, &escaped, &numbers] {
        let (out, _) = masked(&s, doc.as_bytes(), &[7, 50]);
        assert_eq!(out.len(), doc.len());
        let text = String::from_utf8_lossy(&out);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
            "{text}"
        );
        for secret in [line, "bob", "s3cretPass"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}

#[test]
fn each_type_is_found_with_its_offsets() {
    let s = scanner();
    let gh = cat(&["ghp", "_", &"a1B2".repeat(9)]);
    let slack = cat(&["xoxb", "-123456789012-1234567890123-", &"aB3".repeat(8)]);
    let stripe = cat(&["sk", "_live_", &"Ab1".repeat(9)]);
    let google = cat(&["AI", "za", &"Sy_-0".repeat(7)]);
    let akia = cat(&["AK", "IA", "IOSFODNN7EXAMPL2"]);
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let token = jwt(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"sub":"42"}"#);
    let pem = format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB".repeat(3)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "email",
            "mail alice.smith@example.com now".into(),
            "alice.smith@example.com",
        ),
        (
            "credit_card",
            "card 4111 1111 1111 1111.".into(),
            "4111 1111 1111 1111",
        ),
        (
            "credit_card",
            "amex 378282246310005 ok".into(),
            "378282246310005",
        ),
        ("us_ssn", "ssn 123-45-6789".into(), "123-45-6789"),
        ("us_ssn", "SSN: 123456789\n".into(), "123456789"),
        (
            "iban",
            "IBAN DE89 3704 0044 0532 0130 00.".into(),
            "DE89 3704 0044 0532 0130 00",
        ),
        (
            "iban",
            "to GB82WEST12345698765432,".into(),
            "GB82WEST12345698765432",
        ),
        (
            "phone",
            "call (415) 555-0132 today".into(),
            "(415) 555-0132",
        ),
        (
            "phone",
            "call +44 20 7946 0958 today".into(),
            "+44 20 7946 0958",
        ),
        ("ipv4", "from 192.168.10.20 port".into(), "192.168.10.20"),
        ("aws_access_key_id", format!("key={akia} x"), &akia),
        (
            "aws_secret_access_key",
            format!("aws_secret_access_key = \"{secret}\"\n"),
            secret,
        ),
        ("github_token", format!("token: {gh}\n"), &gh),
        ("slack_token", format!("SLACK={slack}\n"), &slack),
        ("stripe_secret_key", format!("key {stripe}\n"), &stripe),
        ("google_api_key", format!("k={google}&x"), &google),
        ("jwt", format!("Authorization: Bearer {token}\r\n"), &token),
        ("private_key", format!("key = '{pem}'\n"), &pem),
        (
            "url_password",
            "DATABASE_URL=postgres://app:hunter22@db.internal/app".into(),
            "hunter22",
        ),
    ];
    for (kind, text, value) in cases {
        assert_eq!(found(&s, &text), one(kind, value), "in {text:?}");
    }
}

/// A greedy match of digit groups took the numbers around a card with
/// it (a row number, an expiry and code, an SSN), failed Luhn as a whole,
/// and the card went unreported: the card inside is found, and what the
/// match swallowed is scanned on its own.
#[test]
fn a_card_beside_other_numbers_is_found() {
    let s = scanner();
    let card = |v: &str| ("credit_card".to_owned(), v.to_owned());
    let ssn = |v: &str| ("us_ssn".to_owned(), v.to_owned());
    for (text, want) in [
        ("4111111111111111 12/27 123", vec![card("4111111111111111")]),
        ("1 4111111111111111", vec![card("4111111111111111")]),
        ("id 1 4111111111111111", vec![card("4111111111111111")]),
        ("4111 1111 1111 1111 12", vec![card("4111 1111 1111 1111")]),
        ("378282246310005 1", vec![card("378282246310005")]),
        (
            "5500 0000 0000 0004 99 items",
            vec![card("5500 0000 0000 0004")],
        ),
        (
            "4111 1111 1111 1111 123-45-6789",
            vec![card("4111 1111 1111 1111"), ssn("123-45-6789")],
        ),
        (
            "123-45-6789 4111 1111 1111 1111",
            vec![ssn("123-45-6789"), card("4111 1111 1111 1111")],
        ),
        // Cast to a decimal (`card::numeric(20,2)`): still the card (found
        // by a black-box pass through the PostgreSQL proxy).
        ("4111111111111111.00", vec![card("4111111111111111")]),
        ("total 4111111111111111.5;", vec![card("4111111111111111")]),
    ] {
        assert_eq!(found(&s, text), want, "{text}");
        let (out, _) = masked(&s, text.as_bytes(), &[3]);
        assert!(
            !String::from_utf8_lossy(&out).contains("4111"),
            "{text}: {}",
            String::from_utf8_lossy(&out)
        );
    }
}

#[test]
fn a_card_length_run_in_a_dotted_version_is_not_a_card() {
    let s = scanner();
    for text in ["4111111111111111.1.2", "1.4111111111111111.00"] {
        assert!(
            found(&s, text).iter().all(|(k, _)| k != "credit_card"),
            "{text}"
        );
    }
}

#[test]
fn look_alikes_are_not_findings() {
    let s = scanner();
    let no_alg = jwt(r#"{"typ":"JWT"}"#, r#"{"sub":"42"}"#);
    let not_json = format!("eyJhbGciOiJIUzI1NiJ9.eyJub3QganNvbg.{}", "c2ln");
    let cases: Vec<String> = vec![
        "card 4111 1111 1111 1112 (Luhn fails)".into(),
        "unknown issuer 9111111111111113".into(),
        "order 12345678-1234-4123-a123-123456789012".into(),
        "ssn 000-12-3456, 666-12-3456, 901-12-3456, 123-00-4567, 123-45-0000".into(),
        "order number 123456789 without the keyword".into(),
        "IBAN DE88 3704 0044 0532 0130 00 (bad check digits)".into(),
        "IBAN QQ89370400440532013000 (no such country)".into(),
        "version 1.2.3.4.5 and v1.2.3.4 and 999.1.1.1".into(),
        format!("akia-like {}", cat(&["AK", "IA", "SHORT12"])),
        format!("gh-like {}", cat(&["ghp", "_", "tooShort"])),
        format!("test key {}", cat(&["sk", "_test_", &"Ab1".repeat(9)])),
        format!("no alg {no_alg}"),
        format!("not json {not_json}"),
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----".into(),
        "-----BEGIN PRIVATE KEY-----\nno end line".into(),
        "https://user@example.com/ and mysql://root:${PASSWORD}@localhost/ and https://u:****@h.example".into(),
        "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 secret hash".into(),
        "icon@2x.png".into(),
        "dates 2024-01-15 and 2024-01-15T10:20:30Z, amounts 1234567.89".into(),
    ];
    for text in cases {
        assert_eq!(found(&s, &text), vec![], "in {text:?}");
    }
}

#[test]
fn the_most_specific_type_wins() {
    let s = scanner();
    // A JWT whose payload holds an email is one JWT.
    let token = jwt(
        r#"{"alg":"HS256"}"#,
        r#"{"email":"alice@example.com","ip":"10.0.0.1"}"#,
    );
    assert_eq!(found(&s, &format!("t={token};")), one("jwt", &token));
    // A card number is not also a phone number.
    assert_eq!(
        found(&s, "5555-5555-5555-4444"),
        one("credit_card", "5555-5555-5555-4444")
    );
    // Nothing inside a private key block is reported on its own.
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n{}\n{}\n-----END PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        cat(&["AK", "IA", "IOSFODNN7EXAMPL2"]),
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
    );
    assert_eq!(found(&s, &format!("{pem}\n")), one("private_key", &pem));
    let (out, _) = masked(&s, pem.as_bytes(), &[10, 100]);
    assert_eq!(out.len(), pem.len());
    // A URL's password is reported, not an email inside it.
    assert_eq!(
        found(&s, "https://bob:pw1234@mail.example.com"),
        one("url_password", "pw1234")
    );
}

#[test]
fn streaming_finds_values_cut_across_chunks_once() {
    let s = scanner();
    let doc = corpus::generate(7, 40_000);
    let whole = s.scan(&doc.bytes);
    assert!(!whole.is_empty());
    let mut rng = 12345u64;
    for size in [1usize, 2, 3, 7, 64, 1000, 4096, 8191, 8192, 8193, 20_000] {
        let mut st = s.stream();
        let mut got = Vec::new();
        for c in doc.bytes.chunks(size) {
            got.extend(st.feed(c));
        }
        got.extend(st.finish());
        assert_eq!(got, whole, "chunks of {size}");
    }
    // Random cuts too.
    for _ in 0..5 {
        let mut st = s.stream();
        let mut got = Vec::new();
        let mut rest = &doc.bytes[..];
        while !rest.is_empty() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let n = (rng % 9000) as usize % rest.len() + 1;
            got.extend(st.feed(&rest[..n]));
            rest = &rest[n..];
        }
        got.extend(st.finish());
        assert_eq!(got, whole);
    }
}

#[test]
fn offsets_are_absolute_far_into_a_stream() {
    let s = scanner();
    let mut st = s.stream();
    let filler = vec![b'.'; 100_000];
    assert_eq!(st.feed(&filler), vec![]);
    let mut got = st.feed(b" bob@example.com ");
    got.extend(st.finish());
    assert_eq!(
        got,
        vec![Finding {
            start: 100_001,
            end: 100_016,
            kind: Kind::Email
        }]
    );
}

#[test]
fn the_stream_holds_a_bounded_window() {
    let s = scanner();
    let mut st = s.stream();
    let chunk = vec![b'a'; 4096];
    for _ in 0..100 {
        st.feed(&chunk);
        assert!(st.buf.len() <= WINDOW + 64 + 4096 + 1, "{}", st.buf.len());
    }
}

fn masked(s: &Scanner, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Finding>) {
    let mut ms = s.mask_stream();
    let mut out = Vec::new();
    let mut found = Vec::new();
    let mut last = 0;
    for &c in cuts {
        found.extend(ms.feed(&input[last..c], &mut out));
        last = c;
    }
    found.extend(ms.feed(&input[last..], &mut out));
    found.extend(ms.finish(&mut out));
    (out, found)
}

#[test]
fn masking_replaces_in_place_and_keeps_the_last_four_card_digits() {
    let s = scanner();
    let input = b"name,card,email\nAnn,4111 1111 1111 1111,ann@example.com\nssn 123-45-6789\n";
    let (out, found) = masked(&s, input, &[]);
    assert_eq!(found.len(), 3);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "name,card,email\nAnn,XXXX XXXX XXXX 1111,***@*******.***\nssn XXX-XX-XXXX\n"
    );
}

#[test]
fn masking_is_length_preserving_and_independent_of_chunking() {
    let s = scanner();
    let doc = corpus::generate(99, 60_000);
    let (reference, found) = masked(&s, &doc.bytes, &[]);
    assert_eq!(reference.len(), doc.bytes.len());
    assert!(!found.is_empty());
    // Outside findings the bytes are unchanged.
    let mut last = 0;
    for f in &found {
        assert_eq!(
            reference[last..f.start as usize],
            doc.bytes[last..f.start as usize]
        );
        assert_ne!(
            reference[f.start as usize..f.end as usize],
            doc.bytes[f.start as usize..f.end as usize]
        );
        last = f.end as usize;
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..20 {
        let mut cuts = Vec::new();
        let mut at = 0usize;
        loop {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            at += (rng % 12_000) as usize + 1;
            if at >= doc.bytes.len() {
                break;
            }
            cuts.push(at);
        }
        let (out, f2) = masked(&s, &doc.bytes, &cuts);
        assert_eq!(out, reference);
        assert_eq!(f2, found);
    }
}

#[test]
fn masking_leaves_clean_input_byte_for_byte_and_holds_back_at_most_the_window() {
    let s = scanner();
    let clean: Vec<u8> = "the quick brown fox jumps over the lazy dog 12 times\n"
        .repeat(2000)
        .into_bytes();
    let mut ms = s.mask_stream();
    let mut out = Vec::new();
    let mut fed = 0;
    for c in clean.chunks(1000) {
        assert!(ms.feed(c, &mut out).is_empty());
        fed += c.len();
        assert!(
            fed - out.len() <= WINDOW + 1,
            "held back {}",
            fed - out.len()
        );
    }
    ms.finish(&mut out);
    assert_eq!(out, clean);
}

#[test]
fn configured_patterns_and_dictionaries_are_findings_of_their_name() {
    let config = Config {
        patterns: vec![CustomPattern {
            name: "employee_id".into(),
            regex: r"\bEMP-[0-9]{6}\b".into(),
        }],
        dictionaries: vec![Dictionary {
            name: "project".into(),
            words: vec!["Blue Falcon".into(), "nightjar".into()],
        }],
    };
    let s = Scanner::new(&config).unwrap();
    assert_eq!(
        found(
            &s,
            "EMP-004217 works on NIGHTJAR and blue falcon, not nightjars"
        ),
        vec![
            ("employee_id".into(), "EMP-004217".into()),
            ("project".into(), "NIGHTJAR".into()),
            ("project".into(), "blue falcon".into()),
        ]
    );
    let counts = crate::counts(&s.scan(b"EMP-000001 EMP-000002 a@example.com"));
    assert_eq!(counts.get("employee_id"), Some(&2));
    assert_eq!(counts.get("email"), Some(&1));
}

#[test]
fn bad_configuration_is_refused() {
    let bad = |patterns: Vec<CustomPattern>| {
        Scanner::new(&Config {
            patterns,
            dictionaries: vec![],
        })
        .is_err()
    };
    let p = |name: &str, regex: &str| CustomPattern {
        name: name.into(),
        regex: regex.into(),
    };
    assert!(bad(vec![p("x", "(")]));
    assert!(bad(vec![p("x", "a*")]));
    assert!(bad(vec![p("email", "abc")]));
    assert!(bad(vec![p("has space", "abc")]));
    assert!(!bad(vec![p("ok_name", "abc")]));
}

#[test]
fn precision_and_recall_per_type_on_the_generated_corpus() {
    let s = scanner();
    let doc = corpus::generate(2026, 3_000_000);
    let got = s.scan(&doc.bytes);
    // Exact span and type match.
    let key = |a: u64, b: u64, k: &Kind| (a, b, k.as_str().to_owned());
    let truth: std::collections::HashSet<_> = doc
        .labels
        .iter()
        .map(|l| key(l.start as u64, l.end as u64, &l.kind))
        .collect();
    let reported: std::collections::HashSet<_> =
        got.iter().map(|f| key(f.start, f.end, &f.kind)).collect();
    let mut table: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new(); // tp, fp, fn
    for r in &reported {
        let e = table.entry(r.2.clone()).or_default();
        if truth.contains(r) {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    for t in &truth {
        if !reported.contains(t) {
            table.entry(t.2.clone()).or_default().2 += 1;
        }
    }
    println!("| type | planted | reported | precision | recall |");
    println!("|---|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    for (kind, (tp, fp, fneg)) in &table {
        let precision = *tp as f64 / (tp + fp).max(1) as f64;
        let recall = *tp as f64 / (tp + fneg).max(1) as f64;
        println!(
            "| {kind} | {} | {} | {precision:.3} | {recall:.3} |",
            tp + fneg,
            tp + fp
        );
        if kind != "phone" && kind != "ipv4" && (precision < 0.95 || recall < 0.95) {
            failures.push(kind.clone());
        }
    }
    // Print a few misses to make a failure readable.
    let text =
        |a: u64, b: u64| String::from_utf8_lossy(&doc.bytes[a as usize..b as usize]).into_owned();
    let mut fps: Vec<_> = reported.iter().filter(|r| !truth.contains(*r)).collect();
    // The asserted types first.
    fps.sort_by_key(|r| (r.2 == "phone" || r.2 == "ipv4", r.0));
    for r in fps.iter().take(15) {
        println!("false positive {}: {:?}", r.2, text(r.0, r.1));
    }
    for t in truth.iter().filter(|t| !reported.contains(*t)).take(15) {
        println!("missed {}: {:?}", t.2, text(t.0, t.1));
    }
    assert_eq!(table.len(), 15, "every built-in type is planted: {table:?}");
    assert!(failures.is_empty(), "below 0.95: {failures:?}");
}

#[test]
fn arbitrary_bytes_never_panic_and_keep_their_length() {
    // Corpus fragments cut at random places, glued with random bytes
    // (invalid UTF-8 included), through random chunk sizes.
    let s = scanner();
    let doc = corpus::generate(5, 200_000);
    let mut rng = 0xDEAD_BEEF_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut input = Vec::new();
    while input.len() < 300_000 {
        let at = (next() % doc.bytes.len() as u64) as usize;
        let len = (next() % 3000) as usize;
        input.extend_from_slice(&doc.bytes[at..(at + len).min(doc.bytes.len())]);
        for _ in 0..(next() % 20) {
            input.push(next() as u8);
        }
    }
    let whole = s.scan(&input);
    let mut cuts = Vec::new();
    let mut at = 0;
    loop {
        at += (next() % 5000) as usize + 1;
        if at >= input.len() {
            break;
        }
        cuts.push(at);
    }
    let (out, found) = masked(&s, &input, &cuts);
    assert_eq!(out.len(), input.len());
    assert_eq!(found, whole);
    for w in found.windows(2) {
        assert!(w[0].end <= w[1].start, "overlap {w:?}");
    }
}

/// Scanned on several threads, the corpus gives exactly the findings of
/// one sequential scan, wherever the cuts fall (many cuts, some inside
/// findings, segments under two windows long) — and the scans always
/// agree near their cut, so going on alone is not what makes it so. A
/// sparse input with no candidate near a cut goes on alone, and still
/// agrees.
#[test]
fn parallel_scan_equals_the_sequential_one() {
    let s = scanner();
    let run = |input: &[u8], threads: usize| {
        let mut found = Vec::new();
        let joined = s
            .scan_segments(input, input.len() as u64, threads, &mut |f| {
                found.push(f);
                Ok(())
            })
            .unwrap();
        (found, joined)
    };
    let doc = corpus::generate(31, 400_000);
    let bytes = &doc.bytes[..];
    let sequential = s.scan(bytes);
    assert!(sequential.len() > 1000);
    for threads in [1, 2, 3, 7, 16, 30] {
        assert_eq!(
            run(bytes, threads),
            (sequential.clone(), true),
            "{threads} threads"
        );
    }
    let mut shifted = b"x".repeat(777).to_vec();
    shifted.extend_from_slice(bytes);
    assert_eq!(run(&shifted, 5), (s.scan(&shifted), true));
    // The public entry point: small inputs stay on one thread.
    let mut found = Vec::new();
    s.scan_parallel(bytes, bytes.len() as u64, 4, &mut |f| {
        found.push(f);
        Ok(())
    })
    .unwrap();
    assert_eq!(found, sequential);
    // Long stretches with nothing to find: no join near the cut, so the
    // first scan goes on alone, with the same result.
    let mut sparse = b"plain words and nothing else. ".repeat(200_000);
    sparse.extend_from_slice(b" mail ann.lee@example.com now");
    let expected = s.scan(&sparse);
    assert_eq!(expected.len(), 1);
    assert_eq!(run(&sparse, 2), (expected, false));
    // A failing sink stops the scan with its error.
    let err = s
        .scan_segments(bytes, bytes.len() as u64, 3, &mut |_| {
            Err(std::io::Error::other("sink full"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "sink full");
}
