//! The built-in detectors: one raw pattern each (compiled together into a
//! single multi-pattern automaton by `lib.rs`) and the validator that turns
//! a pattern match into a finding, or rejects it as a look-alike.

use base64::Engine as _;

use crate::Kind;

/// One detector: its pattern (ASCII, byte-oriented) and what a match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Det {
    PrivateKey,
    Jwt,
    UrlPassword,
    Github,
    Slack,
    Stripe,
    Google,
    AwsKeyId,
    AwsSecret,
    SsnKeyword,
    Iban,
    CreditCard,
    Ssn,
    Phone,
    Ipv4,
    Email,
}

/// In priority order: where two patterns match at the same start, the
/// earlier one is tried first (leftmost-first semantics of the automaton),
/// so the more specific detector wins. Patterns that fire on ordinary text
/// avoid bounded counts (`{0,63}`) where a validator can check the length:
/// on base64 and hex runs counted repetitions make the lazy DFA build
/// states faster than it can reuse them.
pub(crate) const BUILTINS: &[(Det, &str)] = &[
    (
        Det::PrivateKey,
        r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----",
    ),
    (
        Det::Jwt,
        r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    ),
    (
        Det::UrlPassword,
        r#"\b[A-Za-z][A-Za-z0-9+.-]*:(?://|\\/\\/)[^\s:@/?#"'<>]+:[^\s@/?#"'<>]+@[A-Za-z0-9]"#,
    ),
    (
        Det::Github,
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b",
    ),
    (
        Det::Slack,
        r"\bxox[abprs]-[0-9A-Za-z]{1,40}(?:-[0-9A-Za-z]{1,64}){1,4}\b",
    ),
    (Det::Stripe, r"\b[sr]k_live_[0-9A-Za-z]{24,}\b"),
    (Det::Google, r"\bAIza[0-9A-Za-z_-]{35}"),
    (Det::AwsKeyId, r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    (
        Det::AwsSecret,
        r#"(?i:aws|secret)[A-Za-z0-9_.-]{0,30}["']?[ \t]{0,3}(?::|=>?)[ \t]{0,3}["']?[A-Za-z0-9/+]{40}"#,
    ),
    (
        Det::SsnKeyword,
        r"(?i:ssn|social security)[^0-9\n]{0,20}[0-9]{9}\b",
    ),
    (Det::Iban, r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9])+\b"),
    (Det::CreditCard, r"\b[0-9](?:[ -]?[0-9]){12,18}\b"),
    (
        Det::Ssn,
        r"\b(?:[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4})\b",
    ),
    (
        Det::Phone,
        r"(?:\+[1-9][0-9]{0,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6}|(?:\+?\b1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[-. ])[2-9][0-9]{2}[-. ][0-9]{4}\b|\b0[1-9][0-9]{1,3}[ -][0-9]{3,4}[ -][0-9]{3,4}\b)",
    ),
    (
        Det::Ipv4,
        r"\b[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\b",
    ),
    (
        Det::Email,
        r"\b[A-Za-z0-9][A-Za-z0-9_.%+-]*(?:@|\\u0040)[A-Za-z0-9](?:[A-Za-z0-9-]*\.)+[A-Za-z]{2,24}\b",
    ),
];

impl Det {
    pub(crate) fn kind(self) -> Kind {
        match self {
            Det::PrivateKey => Kind::PrivateKey,
            Det::Jwt => Kind::Jwt,
            Det::UrlPassword => Kind::UrlPassword,
            Det::Github => Kind::GithubToken,
            Det::Slack => Kind::SlackToken,
            Det::Stripe => Kind::StripeSecretKey,
            Det::Google => Kind::GoogleApiKey,
            Det::AwsKeyId => Kind::AwsAccessKeyId,
            Det::AwsSecret => Kind::AwsSecretAccessKey,
            Det::SsnKeyword | Det::Ssn => Kind::UsSsn,
            Det::Iban => Kind::Iban,
            Det::CreditCard => Kind::CreditCard,
            Det::Phone => Kind::Phone,
            Det::Ipv4 => Kind::Ipv4,
            Det::Email => Kind::Email,
        }
    }

    /// The detectors also tried, anchored at the same start, when this one's
    /// validator rejects its match: a Luhn-failing 10-digit run can still be
    /// a phone number.
    pub(crate) fn fallbacks(self) -> &'static [Det] {
        match self {
            // `123-45-6789 4111…`: the greedy card match swallowed an SSN.
            Det::CreditCard => &[Det::Ssn, Det::Phone],
            Det::Ssn => &[Det::Phone],
            Det::Iban => &[Det::Email],
            _ => &[],
        }
    }

    /// Validates the match `hay[start..end]` (the whole buffer is passed so
    /// validators can look at the bytes around it and, for PEM blocks, ahead
    /// up to `ahead`). Returns the finding's span, which can be narrower
    /// (the value after a keyword) or wider (a PEM block to its END line).
    pub(crate) fn validate(
        self,
        hay: &[u8],
        start: usize,
        end: usize,
        ahead: usize,
    ) -> Option<(usize, usize)> {
        let m = &hay[start..end];
        let before = |n: usize| -> &[u8] { &hay[start.saturating_sub(n)..start] };
        let after = hay.get(end).copied();
        match self {
            Det::PrivateKey => private_key(hay, start, end, ahead),
            Det::Jwt => {
                if after.is_some_and(|b| b == b'=' || is_b64url(b)) {
                    return None;
                }
                jwt(m).then_some((start, end))
            }
            Det::UrlPassword => url_password(m).map(|(a, b)| (start + a, start + b)),
            Det::Github | Det::Stripe | Det::AwsKeyId => Some((start, end)),
            Det::Slack => slack(m).then_some((start, end)),
            Det::Google => {
                if after.is_some_and(is_b64url) {
                    return None;
                }
                Some((start, end))
            }
            Det::AwsSecret => {
                if after.is_some_and(|b| is_b64(b) || b == b'=') {
                    return None;
                }
                let v = &m[m.len() - 40..];
                let upper = v.iter().any(u8::is_ascii_uppercase);
                let lower = v.iter().any(u8::is_ascii_lowercase);
                let digit = v
                    .iter()
                    .any(|b| b.is_ascii_digit() || *b == b'/' || *b == b'+');
                // A keyword glued to a longer identifier ("mysecretary") is
                // not the keyword.
                let kw_ok = !before(1).first().is_some_and(u8::is_ascii_alphabetic);
                (upper && lower && digit && kw_ok).then_some((end - 40, end))
            }
            Det::SsnKeyword => {
                if before(1).first().is_some_and(u8::is_ascii_alphabetic) {
                    return None;
                }
                let v = &m[m.len() - 9..];
                ssn_parts(&v[0..3], &v[3..5], &v[5..9]).then_some((end - 9, end))
            }
            Det::Ssn => {
                if dotted_neighbour(hay, start, end, b'-') {
                    return None;
                }
                ssn_parts(&m[0..3], &m[4..6], &m[7..11]).then_some((start, end))
            }
            Det::Iban => iban(m).map(|len| (start, start + len)),
            Det::CreditCard => card_within(hay, start, end),
            Det::Phone => {
                if dotted_neighbour(hay, start, end, b'.')
                    || dotted_neighbour(hay, start, end, b'-')
                {
                    return None;
                }
                phone(m).then_some((start, end))
            }
            Det::Ipv4 => {
                if dotted_neighbour(hay, start, end, b'.') {
                    return None;
                }
                // `v1.2.3.4` is a version.
                if matches!(before(1).first(), Some(b'v' | b'V')) {
                    return None;
                }
                ipv4(m).then_some((start, end))
            }
            // `scheme://user@host` is a URL's user, not an address.
            Det::Email => {
                (before(3) != b"://" && before(5) != b":\\/\\/" && email(m)).then_some((start, end))
            }
        }
    }
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'/' || b == b'+'
}

/// True when the match continues a longer run joined by `sep` on either
/// side (`1.2.3.4.5`, `555-123-4567-89`): then it is part of something
/// else (a version, an id) rather than a value of its own.
fn dotted_neighbour(hay: &[u8], start: usize, end: usize, sep: u8) -> bool {
    let left = start >= 2 && hay[start - 1] == sep && hay[start - 2].is_ascii_digit();
    let right = end + 1 < hay.len() && hay[end] == sep && hay[end + 1].is_ascii_digit();
    left || right
}

/// Whether the digits `start..end` are followed by `.` and a fraction that
/// ends the number (`.00`, not `.1.2`), with nothing joined before them.
fn decimal_fraction(hay: &[u8], start: usize, end: usize) -> bool {
    let left =
        start >= 2 && matches!(hay[start - 1], b'.' | b'-') && hay[start - 2].is_ascii_digit();
    if left || hay.get(end) != Some(&b'.') {
        return false;
    }
    let fraction = hay[end + 1..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let after = end + 1 + fraction;
    fraction > 0
        && !(hay.get(after) == Some(&b'.') && hay.get(after + 1).is_some_and(u8::is_ascii_digit))
}

fn digits(m: &[u8]) -> Vec<u8> {
    m.iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect()
}

fn num(d: &[u8]) -> u32 {
    d.iter().fold(0, |acc, b| acc * 10 + u32::from(b - b'0'))
}

/// SSA rules: area not 000, 666 or 900–999; group not 00; serial not 0000.
fn ssn_parts(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    let a = num(area);
    a != 0 && a != 666 && a < 900 && num(group) != 0 && num(serial) != 0
}

pub(crate) fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// The card number in a greedy match of digit groups: the whole match,
/// or else the run of its groups with the most groups (leftmost first)
/// that is one, so a row number before a card or an expiry and code after
/// it (`1 4111111111111111`, `4111111111111111 12/27 123`) do not hide it.
/// Groups are cut only at separators: a run of digits is never carved.
fn card_within(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let mut groups = Vec::new();
    let mut i = start;
    while i < end {
        if hay[i].is_ascii_digit() {
            let from = i;
            while i < end && hay[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((from, i));
        } else {
            i += 1;
        }
    }
    let n = groups.len();
    (1..=n).rev().find_map(|len| {
        (0..=n - len).find_map(|first| {
            let (s, e) = (groups[first].0, groups[first + len - 1].1);
            // A decimal fraction after it (`4111111111111111.00`, a card
            // cast to numeric) does not make it part of something else;
            // a second dot (a version) does.
            let apart = (dotted_neighbour(hay, s, e, b'.') && !decimal_fraction(hay, s, e))
                || dotted_neighbour(hay, s, e, b'-')
                || (s > 0 && hay[s - 1] == b'+');
            (!apart && credit_card(&hay[s..e])).then_some((s, e))
        })
    })
}

fn credit_card(m: &[u8]) -> bool {
    let d = digits(m);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    // One kind of separator, if any, and never two in a row (the pattern
    // already forbids doubles).
    let seps: Vec<u8> = m.iter().copied().filter(|b| !b.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    if !seps.is_empty() {
        // Printed cards group in 4s (or 4-6-5 for 15 digits).
        let groups: Vec<usize> = m.split(|b| !b.is_ascii_digit()).map(<[u8]>::len).collect();
        let fours = groups.iter().take(groups.len() - 1).all(|&g| g == 4)
            && groups.last().is_some_and(|&g| (1..=4).contains(&g));
        let amex = groups == [4, 6, 5] || groups == [4, 6, 4];
        if !(fours || amex) {
            return false;
        }
    }
    known_iin(&d) && luhn(&d)
}

/// Issuer prefixes of the major networks, with their lengths.
fn known_iin(d: &[u8]) -> bool {
    let p = |n: usize| {
        d.iter()
            .take(n)
            .fold(0u32, |acc, &x| acc * 10 + u32::from(x))
    };
    let len = d.len();
    let visa = d[0] == 4 && matches!(len, 13 | 16 | 19);
    let mc = ((51..=55).contains(&p(2)) || (2221..=2720).contains(&p(4))) && len == 16;
    let amex = matches!(p(2), 34 | 37) && len == 15;
    let discover =
        (p(4) == 6011 || (644..=649).contains(&p(3)) || p(2) == 65) && (16..=19).contains(&len);
    let jcb = (3528..=3589).contains(&p(4)) && (16..=19).contains(&len);
    let diners =
        ((300..=305).contains(&p(3)) || matches!(p(2), 36 | 38 | 39)) && (14..=19).contains(&len);
    let unionpay = p(2) == 62 && (16..=19).contains(&len);
    let maestro = matches!(p(2), 50 | 56 | 57 | 58 | 67) && (13..=19).contains(&len);
    visa || mc || amex || discover || jcb || diners || unionpay || maestro
}

/// IBAN lengths by country (SWIFT registry).
fn iban_len(cc: &[u8]) -> Option<usize> {
    const T: &[(&[u8; 2], usize)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NL", 18),
        (b"NO", 15),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"SA", 24),
        (b"SC", 31),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
    ];
    T.iter().find(|(c, _)| c.as_slice() == cc).map(|(_, l)| *l)
}

pub(crate) fn iban_mod97(compact: &[u8]) -> u32 {
    let mut r = 0u32;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return u32::MAX,
        };
        r = if v >= 10 {
            (r * 100 + v) % 97
        } else {
            (r * 10 + v) % 97
        };
    }
    r
}

/// Returns the length of the valid IBAN at the start of `m`: the greedy
/// pattern can run into a following upper-case word, so shorter prefixes
/// that end at a group boundary are tried too.
fn iban(m: &[u8]) -> Option<usize> {
    let want = iban_len(&m[..2])?;
    let mut compact = Vec::with_capacity(m.len());
    for (i, &b) in m.iter().enumerate() {
        if b != b' ' {
            compact.push(b);
        }
        let boundary = i + 1 == m.len() || m[i + 1] == b' ';
        if compact.len() == want && boundary {
            return (iban_mod97(&compact) == 1).then_some(i + 1);
        }
        if compact.len() > want {
            return None;
        }
    }
    None
}

fn phone(m: &[u8]) -> bool {
    let d = digits(m);
    if m[0] == b'+' {
        // E.164: up to 15 digits; fewer than 8 is not a full number.
        if !(8..=15).contains(&d.len()) {
            return false;
        }
        // Compact E.164 (no separators) is only taken up to 15 digits and
        // with a country code; separated forms need groups of ≥ 2 digits
        // after the country code.
        let groups: Vec<&[u8]> = m[1..]
            .split(|b| !b.is_ascii_digit())
            .filter(|g| !g.is_empty())
            .collect();
        return groups.iter().skip(1).all(|g| g.len() >= 2);
    }
    (10..=11).contains(&d.len())
}

fn ipv4(m: &[u8]) -> bool {
    m.split(|&b| b == b'.')
        .all(|o| !(o.is_empty() || o.len() > 1 && o[0] == b'0') && num(o) <= 255)
}

fn email(m: &[u8]) -> bool {
    // The pattern's local part holds no `\`, so the first `@` or `\u0040`
    // (a JSON string's escaped `@`) is the separator.
    let Some((local, domain)) =
        m.iter()
            .position(|&b| b == b'@' || b == b'\\')
            .map(|at| match m[at] {
                b'@' => (&m[..at], &m[at + 1..]),
                _ => (&m[..at], &m[(at + 6).min(m.len())..]),
            })
    else {
        return false;
    };
    // RFC 5321 limits; the pattern leaves them out so that the automaton
    // does not count (counted repetitions multiply its states).
    if local.len() > 64 || domain.len() > 253 {
        return false;
    }
    if local.last() == Some(&b'.') || local.windows(2).any(|w| w == b"..") {
        return false;
    }
    if domain
        .split(|&b| b == b'.')
        .any(|l| l.is_empty() || l[0] == b'-' || l[l.len() - 1] == b'-')
    {
        return false;
    }
    // `icon@2x.png` is a file name.
    let tld = domain.rsplit(|&b| b == b'.').next().unwrap_or_default();
    let tld = tld.to_ascii_lowercase();
    !matches!(
        tld.as_slice(),
        b"png" | b"jpg" | b"jpeg" | b"gif" | b"svg" | b"webp" | b"js" | b"css" | b"ico"
    )
}

fn jwt(m: &[u8]) -> bool {
    let mut parts = m.split(|&b| b == b'.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        return false;
    };
    let decode = |part: &[u8]| -> Option<serde_json::Map<String, serde_json::Value>> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            serde_json::Value::Object(o) => Some(o),
            _ => None,
        }
    };
    let Some(header) = decode(h) else {
        return false;
    };
    header.get("alg").is_some_and(serde_json::Value::is_string) && decode(p).is_some()
}

/// The password span inside `scheme://user:password@host`.
fn url_password(m: &[u8]) -> Option<(usize, usize)> {
    // The scheme holds no `:`; `:\/\/` is `://` in a JSON string.
    let colon = m.iter().position(|&b| b == b':')?;
    let scheme_end = colon
        + [&b"://"[..], b":\\/\\/"]
            .iter()
            .find(|sep| m[colon..].starts_with(sep))?
            .len();
    let at = m.iter().rposition(|&b| b == b'@')?;
    let colon = scheme_end + m[scheme_end..at].iter().position(|&b| b == b':')?;
    let pw = &m[colon + 1..at];
    // Placeholders and already-masked values are not passwords.
    let placeholder = pw.iter().all(|&b| b == b'*' || b == b'x' || b == b'X')
        || pw.starts_with(b"${")
        || pw.starts_with(b"{{")
        || pw.starts_with(b"%(")
        || pw.starts_with(b"<");
    (!pw.is_empty() && !placeholder).then_some((colon + 1, at))
}

fn slack(m: &[u8]) -> bool {
    // A workspace/user id group of digits comes first in every token kind.
    let second = m[5..].split(|&b| b == b'-').next().unwrap_or_default();
    m.len() >= 24 && second.iter().all(u8::is_ascii_digit) && second.len() >= 6
}

/// A PEM private key block: the BEGIN line matched, then an END line with
/// the same label within the window, and base64 between.
fn private_key(hay: &[u8], start: usize, end: usize, ahead: usize) -> Option<(usize, usize)> {
    let label = &hay[start + 11..end - 5]; // between "-----BEGIN " and "-----"
    let limit = ahead.min(hay.len());
    if end >= limit {
        return None;
    }
    let rest = &hay[end..limit];
    let mut needle = b"-----END ".to_vec();
    needle.extend_from_slice(label);
    needle.extend_from_slice(b"-----");
    let at = rest
        .windows(needle.len())
        .position(|w| w == needle.as_slice())?;
    let body = &rest[..at];
    let b64 = body.iter().filter(|b| is_b64(**b) || **b == b'=').count();
    // `\` for a block inside a JSON string, its line breaks written `\n`:
    // how a cloud service account's key file carries its private key.
    let ok = b64 >= 32
        && body.iter().all(|&b| {
            is_b64(b)
                || b == b'='
                || b == b'\\'
                || b.is_ascii_whitespace()
                || b == b':'
                || b == b'-'
                || b == b','
                || b.is_ascii_alphanumeric()
        });
    ok.then_some((start, end + at + needle.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_iin() {
        assert!(credit_card(b"4111 1111 1111 1111"));
        assert!(!credit_card(b"4111 1111 1111 1112"));
        assert!(credit_card(b"378282246310005"));
        assert!(!credit_card(b"9111111111111111")); // no such issuer (Luhn ok? irrelevant)
        assert!(!credit_card(b"4111-1111 1111-1111"));
    }

    #[test]
    fn iban_checks() {
        assert_eq!(iban(b"DE89370400440532013000"), Some(22));
        assert_eq!(iban(b"DE89 3704 0044 0532 0130 00"), Some(27));
        assert_eq!(iban(b"DE88370400440532013000"), None);
        assert_eq!(iban(b"GB82 WEST 1234 5698 7654 32 ABCD"), Some(27));
        assert_eq!(iban(b"QQ89370400440532013000"), None);
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn_parts(b"123", b"45", b"6789"));
        for (a, g, s) in [
            ("000", "12", "3456"),
            ("666", "12", "3456"),
            ("900", "12", "3456"),
            ("123", "00", "4567"),
            ("123", "45", "0000"),
        ] {
            assert!(!ssn_parts(a.as_bytes(), g.as_bytes(), s.as_bytes()));
        }
    }

    #[test]
    fn ipv4_octets() {
        assert!(ipv4(b"192.168.1.20"));
        assert!(!ipv4(b"256.1.1.1"));
        assert!(!ipv4(b"01.2.3.4"));
    }

    #[test]
    fn url_password_span() {
        let m = b"postgres://app:s3cret@db";
        assert_eq!(url_password(m), Some((15, 21)));
        assert_eq!(url_password(b"https://u:****@h"), None);
    }
}
