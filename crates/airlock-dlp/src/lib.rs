//! Airlock's data-loss scanner: finds personal data and secrets in bytes
//! as they stream past (bounded memory), validates what has a check (Luhn,
//! IBAN mod 97, SSN rules, JWT structure), and masks findings in place.
//! No I/O: the proxies, the CLI and tests feed it bytes.
//!
//! The API here is what the proxies build on: [`Scanner`] (built once from
//! a [`Config`]), [`Stream`] (findings with absolute byte offsets, fed chunk
//! by chunk) and [`MaskStream`] (the same, writing the masked bytes out,
//! holding back at most a window).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use regex_automata::meta::Regex;
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::{Anchored, Input, Match, PatternID};
use regex_syntax::hir::Hir;
use serde::Deserialize;

#[doc(hidden)]
pub mod corpus;
mod detectors;
mod parallel;

pub use parallel::{Emit, ReadAt};
#[cfg(test)]
mod tests;

/// What a finding is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An email address.
    Email,
    /// A payment card number passing Luhn.
    CreditCard,
    /// A US social security number passing the area/group/serial rules.
    UsSsn,
    /// An IBAN passing mod 97.
    Iban,
    /// A phone number.
    Phone,
    /// An IPv4 address.
    Ipv4,
    /// An AWS access key id (`AKIA…`).
    AwsAccessKeyId,
    /// An AWS secret access key (near its keyword).
    AwsSecretAccessKey,
    /// A GitHub token (`ghp_…`, `github_pat_…`, …).
    GithubToken,
    /// A Slack token (`xox?-…`).
    SlackToken,
    /// A Stripe secret key (`sk_live_…`).
    StripeSecretKey,
    /// A Google API key (`AIza…`).
    GoogleApiKey,
    /// A JSON Web Token whose header and payload decode as JSON.
    Jwt,
    /// A PEM private key block.
    PrivateKey,
    /// A password in a URL's userinfo.
    UrlPassword,
    /// A configured pattern or dictionary, by its name.
    Custom(String),
}

impl Kind {
    /// The name used in output, audit records and policy context.
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Email => "email",
            Kind::CreditCard => "credit_card",
            Kind::UsSsn => "us_ssn",
            Kind::Iban => "iban",
            Kind::Phone => "phone",
            Kind::Ipv4 => "ipv4",
            Kind::AwsAccessKeyId => "aws_access_key_id",
            Kind::AwsSecretAccessKey => "aws_secret_access_key",
            Kind::GithubToken => "github_token",
            Kind::SlackToken => "slack_token",
            Kind::StripeSecretKey => "stripe_secret_key",
            Kind::GoogleApiKey => "google_api_key",
            Kind::Jwt => "jwt",
            Kind::PrivateKey => "private_key",
            Kind::UrlPassword => "url_password",
            Kind::Custom(name) => name,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: `[start, end)` byte offsets from the start of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What it is.
    pub kind: Kind,
}

/// Counts by type, never values: what goes into audit records and policy
/// context.
pub fn counts(findings: &[Finding]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in findings {
        *out.entry(f.kind.as_str().to_owned()).or_insert(0) += 1;
    }
    out
}

/// Extra detectors from the configuration (`[dlp]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Named regular expressions; a match is a finding of that name.
    #[serde(default)]
    pub patterns: Vec<CustomPattern>,
    /// Named word lists; a whole-word, case-insensitive occurrence is a
    /// finding of that name.
    #[serde(default)]
    pub dictionaries: Vec<Dictionary>,
}

/// `[[dlp.patterns]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// The finding type it reports (letters, digits, `_`).
    pub name: String,
    /// The pattern (Rust `regex` syntax).
    pub regex: String,
}

/// `[[dlp.dictionaries]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dictionary {
    /// The finding type it reports.
    pub name: String,
    /// The words.
    pub words: Vec<String>,
}

/// The raw patterns of the built-in detectors, before validation (for
/// benchmarks that run the same patterns through another tool).
#[doc(hidden)]
pub fn builtin_patterns() -> Vec<&'static str> {
    detectors::BUILTINS.iter().map(|(_, p)| *p).collect()
}

/// Why a scanner could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DlpError {
    /// A configured pattern or name is not valid.
    #[error("dlp: {0}")]
    Config(String),
}

/// The longest finding (and the longest match any pattern may have) in
/// bytes, and so the most a stream holds back: enough for a 4096-bit RSA
/// key in PEM (about 3.3 KiB) with room to spare. A match longer than this
/// is not a finding (so the result does not depend on how the stream was
/// cut); a configured pattern that would match more is cut off here.
pub const WINDOW: usize = 8 * 1024;

/// Bytes kept before the scan position so validators can look back at a
/// keyword or at the byte before a match.
const LOOKBACK: usize = 64;

/// What a pattern of the automaton stands for.
#[derive(Debug, Clone)]
enum Pat {
    Builtin(detectors::Det),
    Custom(Kind),
}

/// The detectors, compiled once; cheap to share (`Arc`) between requests.
#[derive(Debug)]
pub struct Scanner {
    config: Config,
    /// Every pattern (built-in first, then configured) in one automaton:
    /// one pass over the bytes finds the leftmost candidate of any type.
    /// Its search caches (the lazily built DFA states, up to 8 MiB each)
    /// live in the regex's own pool, so streams share warm states instead
    /// of each rebuilding them, and a stream itself holds only its window.
    regex: Regex,
    pats: Vec<Pat>,
    /// By pattern id: the patterns tried, anchored at the same start, when
    /// a candidate fails its check (the detector's fallbacks, then every
    /// configured detector).
    fallbacks: Vec<Vec<usize>>,
}

fn parse(pattern: &str, unicode: bool) -> Result<Hir, String> {
    regex_syntax::ParserBuilder::new()
        .unicode(unicode)
        .utf8(false)
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())
}

fn valid_name(name: &str) -> Result<(), DlpError> {
    let builtin = detectors::BUILTINS
        .iter()
        .any(|(d, _)| d.kind().as_str() == name);
    // Names travel in audit records and policy context, where the server
    // takes finding types of at most 64 such characters.
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(DlpError::Config(format!(
            "detector name {name:?}: use 1 to 64 letters, digits and _"
        )));
    }
    if builtin {
        return Err(DlpError::Config(format!(
            "detector name {name:?} is a built-in type"
        )));
    }
    Ok(())
}

impl Scanner {
    /// Compiles the built-in detectors and the configured ones.
    pub fn new(config: &Config) -> Result<Self, DlpError> {
        let mut hirs = Vec::new();
        let mut pats = Vec::new();
        for (det, pattern) in detectors::BUILTINS {
            hirs.push(
                parse(pattern, false)
                    .map_err(|e| DlpError::Config(format!("built-in {det:?}: {e}")))?,
            );
            pats.push(Pat::Builtin(*det));
        }
        let mut custom_ids = Vec::new();
        for p in &config.patterns {
            valid_name(&p.name)?;
            let hir = parse(&p.regex, true)
                .map_err(|e| DlpError::Config(format!("pattern {}: {e}", p.name)))?;
            if hir.properties().minimum_len().unwrap_or(0) == 0 {
                return Err(DlpError::Config(format!(
                    "pattern {}: can match nothing (an empty match)",
                    p.name
                )));
            }
            custom_ids.push(hirs.len());
            hirs.push(hir);
            pats.push(Pat::Custom(Kind::Custom(p.name.clone())));
        }
        for d in &config.dictionaries {
            valid_name(&d.name)?;
            let words: Vec<String> = d
                .words
                .iter()
                .filter(|w| !w.trim().is_empty())
                .map(|w| regex_syntax::escape(w.trim()))
                .collect();
            if words.is_empty() {
                return Err(DlpError::Config(format!("dictionary {}: no words", d.name)));
            }
            // ASCII word boundaries: a Unicode one would push the automaton
            // off its fast path on every non-ASCII byte.
            let pattern = format!(r"(?i)(?-u:\b)(?:{})(?-u:\b)", words.join("|"));
            let hir = parse(&pattern, true)
                .map_err(|e| DlpError::Config(format!("dictionary {}: {e}", d.name)))?;
            custom_ids.push(hirs.len());
            hirs.push(hir);
            pats.push(Pat::Custom(Kind::Custom(d.name.clone())));
        }
        let regex = Regex::builder()
            .configure(
                Regex::config()
                    .utf8_empty(false)
                    .which_captures(WhichCaptures::Implicit)
                    .hybrid_cache_capacity(8 * 1024 * 1024),
            )
            .build_many_from_hir(&hirs)
            .map_err(|e| DlpError::Config(e.to_string()))?;
        let fallbacks = pats
            .iter()
            .map(|p| match p {
                Pat::Builtin(d) => d
                    .fallbacks()
                    .iter()
                    .filter_map(|f| {
                        pats.iter()
                            .position(|p| matches!(p, Pat::Builtin(x) if x == f))
                    })
                    .chain(custom_ids.iter().copied())
                    .collect(),
                Pat::Custom(_) => Vec::new(),
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            regex,
            pats,
            fallbacks,
        })
    }

    /// Every finding in `bytes`, in order of `start`.
    pub fn scan(&self, bytes: &[u8]) -> Vec<Finding> {
        let mut s = self.stream();
        let mut out = s.feed(bytes);
        out.extend(s.finish());
        out
    }

    /// A stream: feed chunks, get findings as soon as they are certain.
    pub fn stream(&self) -> Stream<'_> {
        self.stream_at(0, &[])
    }

    /// A stream over the part of a larger input that starts at offset
    /// `start`; `before` holds the bytes just before it (the last
    /// [`LOOKBACK`] are kept: validators and word boundaries look back).
    /// Findings have offsets in the whole input.
    pub(crate) fn stream_at(&self, start: u64, before: &[u8]) -> Stream<'_> {
        let before = &before[before.len().saturating_sub(LOOKBACK)..];
        Stream {
            scanner: self,
            buf: before.to_vec(),
            base: start.saturating_sub(before.len() as u64),
            pos: before.len(),
            returned: 0,
            trace: None,
        }
    }

    /// A masking stream: feed chunks, get the masked bytes out (held back
    /// by at most [`WINDOW`] bytes) and the findings.
    pub fn mask_stream(&self) -> MaskStream<'_> {
        MaskStream {
            inner: self.stream(),
            emitted: 0,
        }
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Decides the candidate `m`: a finding (its span) or not, and where
    /// the scan goes on.
    fn decide(&self, buf: &[u8], ahead: usize, m: Match) -> (Option<(usize, usize, Kind)>, usize) {
        let start = m.start();
        // The scan goes on at the finding's end: past the match for a PEM
        // block (nothing inside the key is reported on its own), before it
        // where the validator cut a greedy match short (an IBAN followed
        // by an upper-case word).
        if let Some(f) = self.check(m.pattern().as_usize(), buf, m.start(), m.end(), ahead) {
            let resume = f.1.max(start + 1);
            return (Some(f), resume);
        }
        // The automaton reports one pattern per start; give the others
        // that may start here a chance.
        for &id in &self.fallbacks[m.pattern().as_usize()] {
            let Some(pid) = PatternID::new(id).ok() else {
                continue;
            };
            let input = Input::new(buf)
                .range(start..buf.len())
                .anchored(Anchored::Pattern(pid));
            if let Some(m2) = self.regex.search(&input) {
                if let Some(f) = self.check(id, buf, m2.start(), m2.end(), ahead) {
                    let resume = f.1.max(start + 1);
                    return (Some(f), resume);
                }
            }
        }
        // A too-long match resumes one byte on, so the outcome does not
        // depend on where the stream was cut; a rejected one is consumed.
        let resume = if m.len() > WINDOW { start + 1 } else { m.end() };
        (None, resume)
    }

    fn check(
        &self,
        id: usize,
        buf: &[u8],
        start: usize,
        end: usize,
        ahead: usize,
    ) -> Option<(usize, usize, Kind)> {
        if end - start > WINDOW {
            return None;
        }
        match &self.pats[id] {
            Pat::Builtin(d) => d
                .validate(buf, start, end, ahead)
                .map(|(s, e)| (s, e, d.kind())),
            Pat::Custom(k) => Some((start, end, k.clone())),
        }
    }
}

/// A scan in progress over one stream of bytes. It holds at most
/// [`WINDOW`] + 64 bytes besides the chunk being fed, whatever the stream's
/// length; a value cut across chunks is found once, with its absolute
/// offsets.
#[derive(Debug)]
pub struct Stream<'a> {
    scanner: &'a Scanner,
    /// The bytes kept: some look-back, then what is not yet decided.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Index in `buf` where the next finding may start.
    pos: usize,
    /// Findings returned so far.
    returned: usize,
    /// When set, the candidates decided in a range of offsets are recorded
    /// (see `parallel`).
    trace: Option<parallel::Trace>,
}

impl Stream<'_> {
    /// Scans the next chunk; returns the findings that are complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Finding> {
        self.buf.extend_from_slice(chunk);
        let out = self.advance(false);
        self.trim();
        out
    }

    /// Ends the stream; returns the findings still held.
    pub fn finish(mut self) -> Vec<Finding> {
        self.advance(true)
    }

    /// Stream offset up to which everything is decided: no finding still to
    /// come starts before it.
    fn decided(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn advance(&mut self, last: bool) -> Vec<Finding> {
        let mut out = Vec::new();
        // A match starting before `limit` cannot be changed by bytes still
        // to come: every match fits in WINDOW bytes, and one more byte
        // settles a trailing word boundary.
        let limit = if last {
            self.buf.len()
        } else {
            self.buf.len().saturating_sub(WINDOW + 1)
        };
        let ahead = if last { self.buf.len() } else { usize::MAX };
        while self.pos < limit {
            let input = Input::new(&self.buf).range(self.pos..self.buf.len());
            let Some(m) = self.scanner.regex.search(&input) else {
                self.pos = limit;
                break;
            };
            if m.start() >= limit {
                self.pos = limit;
                break;
            }
            let ahead = ahead.min(m.start() + WINDOW);
            if let Some(t) = &mut self.trace {
                t.record(self.base + m.start() as u64, self.returned);
            }
            let (found, resume) = self.scanner.decide(&self.buf, ahead, m);
            if let Some((s, e, kind)) = found {
                self.returned += 1;
                out.push(Finding {
                    start: self.base + s as u64,
                    end: self.base + e as u64,
                    kind,
                });
            }
            self.pos = resume.max(self.pos + 1);
        }
        out
    }

    fn trim(&mut self) {
        let drop = self.pos.saturating_sub(LOOKBACK);
        if drop > 0 {
            self.buf.drain(..drop);
            self.base += drop as u64;
            self.pos -= drop;
        }
    }
}

/// A masking scan in progress: writes the stream back out with every
/// finding replaced in place by the same number of bytes (`X` for digits,
/// `*` otherwise; line breaks kept, punctuation kept in personal data, the
/// last 4 digits of a card number kept), holding back at most [`WINDOW`] + 1 bytes.
#[derive(Debug)]
pub struct MaskStream<'a> {
    inner: Stream<'a>,
    /// Stream offset up to which the bytes have been written out.
    emitted: u64,
}

impl MaskStream<'_> {
    /// Scans and masks the next chunk, appending what is certain to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Vec<Finding> {
        self.inner.buf.extend_from_slice(chunk);
        let found = self.inner.advance(false);
        self.emit(&found, out);
        self.inner.trim();
        found
    }

    /// Ends the stream, appending what was held back.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Vec<Finding> {
        let found = self.inner.advance(true);
        self.emit(&found, out);
        let rel = (self.emitted - self.inner.base) as usize;
        out.extend_from_slice(&self.inner.buf[rel..]);
        found
    }

    /// Writes out the bytes up to the decided offset, masking `found` (all
    /// of which lie in that range).
    fn emit(&mut self, found: &[Finding], out: &mut Vec<u8>) {
        let base = self.inner.base;
        let upto = self.inner.decided();
        for f in found {
            let (a, b) = ((self.emitted - base) as usize, (f.start - base) as usize);
            out.extend_from_slice(&self.inner.buf[a..b]);
            let end = (f.end - base) as usize;
            let value = &self.inner.buf[b..end];
            let number = json_number(&self.inner.buf[..b], value, &self.inner.buf[end..]);
            mask_into(value, &f.kind, number, out);
            self.emitted = f.end;
        }
        let (a, b) = ((self.emitted - base) as usize, (upto - base) as usize);
        if b > a {
            out.extend_from_slice(&self.inner.buf[a..b]);
            self.emitted = upto;
        }
    }
}

/// Whether `value`, between `before` and `after`, reads as a JSON number
/// (`"card": 4111…`, `[4111…`): masked with `X`, it would be no JSON.
fn json_number(before: &[u8], value: &[u8], after: &[u8]) -> bool {
    let before = before.strip_suffix(b"-").unwrap_or(before);
    let prev = before.iter().rev().find(|b| !b.is_ascii_whitespace());
    let next = after.iter().find(|b| !b.is_ascii_whitespace());
    value.iter().all(u8::is_ascii_digit)
        && match prev {
            Some(b':' | b'[') => true,
            Some(b',') => matches!(next, Some(b']' | b'}')),
            _ => false,
        }
}

/// Masks one finding. One written as a JSON number (a card, an SSN of
/// bare digits) is masked with `9`s (no card network's prefix), so the
/// document stays JSON.
fn mask_into(value: &[u8], kind: &Kind, number: bool, out: &mut Vec<u8>) {
    // Cards keep their last 4 digits, as on a receipt.
    let keep_from = if *kind == Kind::CreditCard {
        value
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_digit())
            .rev()
            .nth(3)
            .map_or(value.len(), |(i, _)| i)
    } else {
        value.len()
    };
    // Personal data keeps its punctuation (the shape is not the value);
    // secrets are masked whole, punctuation included.
    let keep_punct = matches!(
        kind,
        Kind::Email | Kind::CreditCard | Kind::UsSsn | Kind::Phone | Kind::Iban | Kind::Ipv4
    );
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        // An `@` written `\u0040` in a JSON string is kept whole, as `@`
        // is: a kept `\` before a masked `u` would be `\*`, no JSON escape.
        if keep_punct && i < keep_from && value[i..].starts_with(b"\\u0040") {
            out.extend_from_slice(b"\\u0040");
            i += 6;
            continue;
        }
        out.push(match b {
            _ if i >= keep_from => b,
            b'\n' | b'\r' => b,
            b'0'..=b'9' if number => b'9',
            b'0'..=b'9' => b'X',
            // Any other `\` of personal data is masked too, for the same
            // reason.
            b'\\' => b'*',
            _ if keep_punct && (b.is_ascii_punctuation() || b == b' ') => b,
            _ => b'*',
        });
        i += 1;
    }
}
