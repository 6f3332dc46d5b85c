//! Response DLP: decode the body (gzip, deflate, br; bounded, so a small
//! compressed body cannot expand past the cap), scan it with `airlock-dlp`,
//! and report, mask or withhold what it finds. Only counts by type leave
//! this module, never the values.

use std::collections::BTreeMap;
use std::io::Read;

use airlock_dlp::Scanner;
use bytes::Bytes;

/// Why a body could not be scanned; the response is then refused, never
/// passed unscanned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScanError {
    /// Decoded (or still encoded) it is larger than the cap.
    #[error("the response is larger than max_scan_bytes ({0}) once decoded")]
    TooLarge(u64),
    /// A `Content-Encoding` this proxy cannot decode.
    #[error("content-encoding {0:?} cannot be decoded for scanning")]
    Encoding(String),
    /// The body does not decode as its encoding says.
    #[error("the response body does not decode as {0}")]
    Corrupt(String),
}

/// Whether a response of this `Content-Type` is scanned: everything but
/// the media a scanner for text cannot read anyway (images, audio, video,
/// fonts, archives, PDF). The type is the upstream's word, and often the
/// client's choice (`Accept`): YAML, TOML, TSV, SQL, a misspelt or an
/// unknown type are text as far as DLP is concerned, and binary that is
/// scanned is caught by [`Sniffer`].
///
/// A type given twice (two lines, joined with `,`) is scanned if either
/// is: which one a client takes is the client's choice.
pub fn scannable(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    ct.split(',').any(|one| {
        let mime = one
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        text_type(&mime)
    })
}

fn text_type(mime: &str) -> bool {
    let media = ["image/", "audio/", "video/", "font/"];
    let archives = [
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-7z-compressed",
        "application/x-bzip2",
        "application/x-xz",
        "application/zstd",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/pdf",
        "application/wasm",
    ];
    !(media.iter().any(|m| mime.starts_with(m)) || archives.contains(&mime))
}

/// The declared charset of a text body the scanner cannot read as it
/// comes: any but UTF-8 and the ASCII-compatible single-byte sets
/// (US-ASCII, ISO-8859-*, Windows-125x, KOI8), since in UTF-16, UTF-32,
/// UTF-7 or EBCDIC an email or a card number is not the bytes the
/// detectors look for. Such a body is withheld under `mask` and `block`
/// rather than passed unscanned.
///
/// Every `charset` the type mentions counts, quoted or not, in any
/// parameter: readers split parameters their own ways, and
/// `x="a;charset=utf-8"; charset=utf-16le` was read here as UTF-8 and by
/// others as UTF-16 (found by a black-box pass).
pub fn unreadable_charset(content_type: Option<&str>) -> Option<String> {
    let ct = content_type?.to_ascii_lowercase();
    let unread = charsets(&ct).find(|c| !ascii_compatible(c));
    unread
}

/// Every charset a lower-cased `Content-Type` names: each `charset`
/// followed by `=`, in any parameter, quoted or not (readers split
/// parameters their own ways).
pub fn charsets(ct: &str) -> impl Iterator<Item = String> + '_ {
    ct.match_indices("charset").filter_map(|(at, _)| {
        let rest = ct[at + "charset".len()..].trim_start_matches([' ', '\t', '*']);
        let rest = rest.strip_prefix('=')?;
        Some(
            rest.trim_start_matches([' ', '\t', '"', '\''])
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
                .collect(),
        )
    })
}

/// Whether text in `charset` (lower case) has its ASCII as ASCII bytes, one
/// byte each: UTF-8, US-ASCII and the single-byte sets (ISO-8859-*,
/// Windows-125x, KOI8).
pub fn ascii_compatible(charset: &str) -> bool {
    matches!(
        charset,
        "utf-8" | "utf8" | "us-ascii" | "ascii" | "latin1" | "latin-1"
    ) || ["iso-8859-", "iso8859-", "windows-125", "cp125", "koi8"]
        .iter()
        .any(|p| charset.starts_with(p))
}

/// Watches the start of a decoded body for what the detectors cannot
/// read whatever its label says: a UTF-16 or UTF-32 byte order mark, or a
/// NUL byte in its first [`Sniffer::WINDOW`] bytes, where UTF-16 without
/// a mark puts one in every other byte, and binary (a compressed or
/// encrypted file labelled `application/octet-stream`) has them too. Text
/// never does.
#[derive(Debug, Default)]
pub struct Sniffer {
    head: Vec<u8>,
    seen: usize,
}

impl Sniffer {
    /// How far into a body a NUL byte is looked for.
    pub const WINDOW: usize = 1024;

    /// Looks at the next decoded bytes; `Err` says why the body cannot be
    /// scanned. Past the window it costs nothing.
    pub fn push(&mut self, decoded: &[u8]) -> Result<(), &'static str> {
        if self.seen >= Self::WINDOW {
            return Ok(());
        }
        let take = decoded.len().min(Self::WINDOW - self.seen);
        let window = &decoded[..take];
        self.seen += take;
        if self.head.len() < 4 {
            let more = window.len().min(4 - self.head.len());
            self.head.extend_from_slice(&window[..more]);
            if self.head.starts_with(&[0xFE, 0xFF])
                || self.head.starts_with(&[0xFF, 0xFE])
                || self.head.starts_with(&[0, 0, 0xFE, 0xFF])
            {
                return Err("it starts with a UTF-16 or UTF-32 byte order mark");
            }
        }
        if window.contains(&0) {
            return Err("it holds NUL bytes: UTF-16, UTF-32 or binary");
        }
        Ok(())
    }
}

/// Reads at most `max` bytes from `r`; more is an error.
fn bounded(r: impl Read, max: u64, what: &str) -> Result<Vec<u8>, ScanError> {
    let mut out = Vec::new();
    r.take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| ScanError::Corrupt(what.to_owned()))?;
    if out.len() as u64 > max {
        return Err(ScanError::TooLarge(max));
    }
    Ok(out)
}

/// Undoes `Content-Encoding` (a comma list, applied in order, so undone in
/// reverse), refusing anything that decodes to more than `max` bytes.
pub fn decode(body: &[u8], encoding: Option<&str>, max: u64) -> Result<Vec<u8>, ScanError> {
    let mut data = body.to_vec();
    let codings: Vec<String> = encoding
        .unwrap_or("")
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    for coding in codings.iter().rev() {
        data = match coding.as_str() {
            "identity" => data,
            "gzip" | "x-gzip" => {
                bounded(flate2::read::MultiGzDecoder::new(&data[..]), max, "gzip")?
            }
            "deflate" => {
                // Servers send zlib-wrapped (as the RFC says) or raw deflate.
                match bounded(flate2::read::ZlibDecoder::new(&data[..]), max, "deflate") {
                    Ok(d) => d,
                    Err(ScanError::TooLarge(m)) => return Err(ScanError::TooLarge(m)),
                    Err(_) => {
                        bounded(flate2::read::DeflateDecoder::new(&data[..]), max, "deflate")?
                    }
                }
            }
            "br" => bounded(brotli::Decompressor::new(&data[..], 8192), max, "br")?,
            other => return Err(ScanError::Encoding(other.to_owned())),
        };
    }
    if data.len() as u64 > max {
        return Err(ScanError::TooLarge(max));
    }
    Ok(data)
}

/// Counts by type.
pub type Counts = BTreeMap<String, u64>;

/// A decoder fed chunk by chunk, for responses scanned as they stream
/// (memory stays bounded by the chunks, whatever the body's size).
pub enum StreamDecoder {
    /// No encoding.
    Identity,
    /// `gzip`.
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    /// `deflate`: zlib-wrapped as RFC 9110 says, or raw as some servers
    /// send it; told apart by the first two bytes.
    Deflate(Inflate),
    /// `br`.
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

/// A `deflate` body as far as it has come.
pub enum Inflate {
    /// Fewer than two bytes seen: which kind is not known yet.
    Sniffing(Vec<u8>),
    /// A zlib header came first.
    Zlib(Box<flate2::write::ZlibDecoder<Vec<u8>>>),
    /// No zlib header: raw deflate.
    Raw(Box<flate2::write::DeflateDecoder<Vec<u8>>>),
}

impl Inflate {
    /// The decoder for a body starting with `head`: a zlib header is a
    /// compression method of 8 and a check making the first two bytes a
    /// multiple of 31 (RFC 1950); anything else is raw deflate.
    fn for_head(head: &[u8]) -> Self {
        let zlib = matches!(head, [cmf, flg, ..]
            if cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0);
        if zlib {
            Self::Zlib(Box::new(flate2::write::ZlibDecoder::new(Vec::new())))
        } else {
            Self::Raw(Box::new(flate2::write::DeflateDecoder::new(Vec::new())))
        }
    }

    fn push(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        if let Self::Sniffing(seen) = self {
            seen.extend_from_slice(chunk);
            if seen.len() < 2 {
                return Ok(Vec::new());
            }
            let seen = std::mem::take(seen);
            *self = Self::for_head(&seen);
            return self.push(&seen);
        }
        match self {
            Self::Sniffing(_) => Ok(Vec::new()),
            Self::Zlib(d) => d.write_all(chunk).map(|()| std::mem::take(d.get_mut())),
            Self::Raw(d) => d.write_all(chunk).map(|()| std::mem::take(d.get_mut())),
        }
    }

    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        if let Self::Sniffing(seen) = self {
            let seen = std::mem::take(seen);
            *self = Self::for_head(&seen);
            let mut out = self.push(&seen)?;
            out.extend(self.finish()?);
            return Ok(out);
        }
        match self {
            Self::Sniffing(_) => Ok(Vec::new()),
            Self::Zlib(d) => d.try_finish().map(|()| std::mem::take(d.get_mut())),
            Self::Raw(d) => d.try_finish().map(|()| std::mem::take(d.get_mut())),
        }
    }
}

impl StreamDecoder {
    /// A decoder for one `Content-Encoding`; `None` when it cannot stream
    /// (several codings, or one this proxy does not know).
    pub fn new(encoding: Option<&str>) -> Option<Self> {
        let coding = encoding.unwrap_or("").trim().to_ascii_lowercase();
        Some(match coding.as_str() {
            "" | "identity" => Self::Identity,
            "gzip" | "x-gzip" => {
                // Every member, as the whole-body decoder reads it: `block`
                // read a two-member body that `mask` broke off after the
                // first (found by a black-box pass).
                Self::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
            }
            "deflate" => Self::Deflate(Inflate::Sniffing(Vec::new())),
            "br" => Self::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 8192))),
            _ => return None,
        })
    }

    /// Decodes the next chunk; what came out. Callers feed small slices
    /// (deflate and brotli expand a byte into at most about a kilobyte), so
    /// what one call returns stays bounded.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, ScanError> {
        use std::io::Write;
        let corrupt = |w: &str| ScanError::Corrupt(w.to_owned());
        Ok(match self {
            Self::Identity => chunk.to_vec(),
            Self::Gzip(d) => {
                d.write_all(chunk).map_err(|_| corrupt("gzip"))?;
                std::mem::take(d.get_mut())
            }
            Self::Deflate(d) => d.push(chunk).map_err(|_| corrupt("deflate"))?,
            Self::Br(d) => {
                d.write_all(chunk).map_err(|_| corrupt("br"))?;
                std::mem::take(d.get_mut())
            }
        })
    }

    /// Ends the stream; what was still inside. A truncated body is an error.
    pub fn finish(&mut self) -> Result<Vec<u8>, ScanError> {
        let corrupt = |w: &str| ScanError::Corrupt(w.to_owned());
        Ok(match self {
            Self::Identity => Vec::new(),
            Self::Gzip(d) => {
                d.try_finish().map_err(|_| corrupt("gzip"))?;
                std::mem::take(d.get_mut())
            }
            Self::Deflate(d) => d.finish().map_err(|_| corrupt("deflate"))?,
            Self::Br(d) => {
                d.close().map_err(|_| corrupt("br"))?;
                std::mem::take(d.get_mut())
            }
        })
    }
}

/// Scans `decoded`; the counts.
pub fn count(scanner: &Scanner, decoded: &[u8]) -> Counts {
    airlock_dlp::counts(&scanner.scan(decoded))
}

/// Masks `decoded` in place (streaming through the scanner's window); the
/// masked bytes and the counts.
pub fn mask(scanner: &Scanner, decoded: &[u8]) -> (Bytes, Counts) {
    let mut out = Vec::with_capacity(decoded.len());
    let mut stream = scanner.mask_stream();
    let mut findings = Vec::new();
    for chunk in decoded.chunks(64 * 1024) {
        findings.extend(stream.feed(chunk, &mut out));
    }
    findings.extend(stream.finish(&mut out));
    (Bytes::from(out), airlock_dlp::counts(&findings))
}

/// Adds `more` to `counts`, type by type.
pub fn add(counts: &mut Counts, more: &Counts) {
    for (kind, n) in more {
        *counts.entry(kind.clone()).or_default() += n;
    }
}

/// Scans every header value of a response (they leave with it: a
/// `Location` with a password in it, an `X-Card`); with `mask`, a value
/// holding a finding is masked in place, or dropped if the masked bytes
/// were no header value. The counts.
pub fn headers(scanner: &Scanner, headers: &mut hyper::HeaderMap, mask: bool) -> Counts {
    let mut counts = Counts::new();
    // A name can carry a value too (`X-4111111111111111: y`): counted, and
    // under `mask` the header dropped (a masked name would be no name).
    let named: Vec<(hyper::header::HeaderName, Counts)> = headers
        .keys()
        .map(|name| (name.clone(), count(scanner, name.as_str().as_bytes())))
        .filter(|(_, found)| !found.is_empty())
        .collect();
    for (name, found) in named {
        add(&mut counts, &found);
        if mask {
            headers.remove(&name);
        }
    }
    for value in headers.values_mut() {
        let (masked, found) = self::mask(scanner, value.as_bytes());
        if found.is_empty() {
            continue;
        }
        add(&mut counts, &found);
        if mask {
            // Masking writes only `X`, `*` and the value's own bytes, so
            // this holds; an empty value is what is left if it did not.
            *value = hyper::header::HeaderValue::from_bytes(&masked)
                .unwrap_or_else(|_| hyper::header::HeaderValue::from_static(""));
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_gzip_deflate_and_br() {
        let text = b"name,email\nann,ann@example.com\n".repeat(10);
        assert_eq!(decode(&gzip(&text), Some("gzip"), 1 << 20).unwrap(), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Default::default());
        z.write_all(&text).unwrap();
        assert_eq!(
            decode(&z.finish().unwrap(), Some("deflate"), 1 << 20).unwrap(),
            text
        );
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), Default::default());
        raw.write_all(&text).unwrap();
        assert_eq!(
            decode(&raw.finish().unwrap(), Some("deflate"), 1 << 20).unwrap(),
            text
        );
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&text).unwrap();
        }
        assert_eq!(decode(&br, Some("br"), 1 << 20).unwrap(), text);
        assert_eq!(decode(&text, None, 1 << 20).unwrap(), text);
    }

    /// A few KiB of gzip that expand to 100 MiB are refused at the cap, not
    /// decoded whole.
    #[test]
    fn decompression_bombs_are_refused() {
        let bomb = gzip(&vec![b'a'; 100 << 20]);
        assert!(bomb.len() < 200 << 10);
        assert_eq!(
            decode(&bomb, Some("gzip"), 1 << 20),
            Err(ScanError::TooLarge(1 << 20))
        );
        assert!(matches!(
            decode(b"x", Some("compress"), 1 << 20),
            Err(ScanError::Encoding(_))
        ));
        assert!(matches!(
            decode(b"not gzip", Some("gzip"), 1 << 20),
            Err(ScanError::Corrupt(_))
        ));
    }

    /// Fed in small chunks, the streaming decoder gives back the same
    /// bytes as decoding whole, holding only what each chunk yields.
    #[test]
    fn stream_decoder_decodes_chunk_by_chunk() {
        let text = b"id,email\n1,someone@example.com\n".repeat(5000);
        let gz = gzip(&text);
        let mut d = StreamDecoder::new(Some("gzip")).unwrap();
        let mut out = Vec::new();
        for c in gz.chunks(100) {
            let piece = d.push(c).unwrap();
            // deflate expands at most ~1032:1: feeding small slices bounds
            // what one push can produce.
            assert!(piece.len() <= 1032 * 100 + (32 << 10), "{}", piece.len());
            out.extend(piece);
        }
        out.extend(d.finish().unwrap());
        assert_eq!(out, text);
        let mut d = StreamDecoder::new(Some("gzip")).unwrap();
        d.push(&gz[..gz.len() / 2]).unwrap();
        assert!(d.finish().is_err(), "a truncated body is an error");
        // deflate streams zlib-wrapped or raw, fed a byte at a time.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Default::default());
        z.write_all(&text).unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), Default::default());
        raw.write_all(&text).unwrap();
        for body in [z.finish().unwrap(), raw.finish().unwrap()] {
            let mut d = StreamDecoder::new(Some("deflate")).unwrap();
            let mut out = Vec::new();
            for c in body.chunks(1) {
                out.extend(d.push(c).unwrap());
            }
            out.extend(d.finish().unwrap());
            assert_eq!(out, text);
        }
        assert!(StreamDecoder::new(Some("gzip, br")).is_none());
        assert!(StreamDecoder::new(None).is_some());
        // A body of two gzip members is read whole, as `decode` reads it.
        let two = [gzip(b"ok\n"), gzip(b"4111111111111111")].concat();
        let mut d = StreamDecoder::new(Some("gzip")).unwrap();
        let mut out = Vec::new();
        for c in two.chunks(7) {
            out.extend(d.push(c).unwrap());
        }
        out.extend(d.finish().unwrap());
        assert_eq!(out, b"ok\n4111111111111111");
    }

    #[test]
    fn text_types_are_scanned_and_binary_ones_not() {
        for ct in [
            None,
            Some("text/csv; charset=utf-8"),
            Some("application/json"),
            Some("application/x-ndjson"),
            Some("application/problem+json"),
            Some("application/xml"),
            Some("application/octet-stream"),
        ] {
            assert!(scannable(ct), "{ct:?}");
        }
        for ct in [
            "application/x-yaml",
            "application/toml",
            "text/tab-separated-values",
            "textcsv",
            "*/*",
            "application/x-unknown",
        ] {
            assert!(scannable(Some(ct)), "{ct}");
        }
        for ct in [
            "image/png",
            "video/mp4",
            "application/zip",
            "application/pdf; x=1",
        ] {
            assert!(!scannable(Some(ct)), "{ct}");
        }
        for ct in [
            "text/csv; charset=UTF-16",
            "text/plain;charset=\"utf-16le\"",
            "application/json; charset=utf-32be",
            "text/plain; charset=utf-7",
        ] {
            assert!(unreadable_charset(Some(ct)).is_some(), "{ct}");
        }
        // Any charset mentioned counts, however the parameters split.
        assert_eq!(
            unreadable_charset(Some("text/csv; x=\"a;charset=utf-8\"; charset=utf-16le"))
                .as_deref(),
            Some("utf-16le")
        );
        for ct in ["text/plain; charset=cp037", "text/plain; charset=unicode"] {
            assert!(unreadable_charset(Some(ct)).is_some(), "{ct}");
        }
        for ct in [
            "text/csv; charset=utf-8",
            "text/plain; charset=iso-8859-1",
            "text/plain; charset=windows-1252",
            "text/csv",
        ] {
            assert_eq!(unreadable_charset(Some(ct)), None, "{ct}");
        }
    }

    #[test]
    fn utf16_without_a_charset_is_spotted() {
        let utf16: Vec<u8> = "name,email\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let mut bom = vec![0xFF, 0xFE];
        bom.extend_from_slice(&utf16);
        // A byte at a time: the mark spans pushes.
        let mut s = Sniffer::default();
        assert!(bom.chunks(1).any(|c| s.push(c).is_err()));
        assert!(Sniffer::default().push(&utf16).is_err());
        assert!(Sniffer::default().push(b"a,b\n\xFF\xFE").is_ok());
        let mut late = Sniffer::default();
        assert!(late.push(&vec![b'a'; Sniffer::WINDOW]).is_ok());
        assert!(late.push(&utf16).is_ok());
    }
}
