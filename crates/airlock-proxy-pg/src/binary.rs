//! Numbers in binary-format result values, written out as decimal text for
//! DLP: a client that asks for `card::bigint` in binary gets eight bytes in
//! which no scanner sees a card number.

/// Type OIDs whose binary form holds numbers: int2, int4, int8, oid,
/// float4, float8, numeric, money.
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const OID: u32 = 26;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const NUMERIC: u32 = 1700;
const MONEY: u32 = 790;
/// The plain number types, whose text form is the number alone.
pub(crate) const NUMBER_TYPES: &[u32] = &[INT2, INT4, INT8, OID, FLOAT4, FLOAT8, NUMERIC];

/// An anonymous record (`row(…)`), whose fields name their own types.
const RECORD: u32 = 2249;
/// 64-bit transaction ids and snapshots of them (`xid8`, `pg_snapshot`,
/// `txid_snapshot`): a number cast through text comes out whole.
const XID8: u32 = 5069;
const SNAPSHOTS: &[u32] = &[5038, 2970];
/// `int2vector` and `oidvector`: arrays whose text form is space-separated
/// (`4111 1111 1111 1111` reads as a card).
const VECTORS: &[u32] = &[22, 30];
/// Geometric types: float8 coordinates, after a header for path and
/// polygon (point, lseg, path, box, polygon, line, circle).
const GEOMETRY: &[(u32, usize)] = &[
    (600, 0),
    (601, 0),
    (602, 5),
    (603, 0),
    (604, 4),
    (628, 0),
    (718, 0),
];

/// Arrays of the above (and of records): their header names the element
/// type, so one reader serves them all.
const ARRAYS: &[u32] = &[1005, 1007, 1016, 1028, 1021, 1022, 1231, 791, 2287];

/// Ranges and multiranges of numbers, by OID, with their element's OID.
const RANGES: &[(u32, u32)] = &[(3904, INT4), (3926, INT8), (3906, NUMERIC)];
const MULTIRANGES: &[(u32, u32)] = &[(4451, INT4), (4536, INT8), (4532, NUMERIC)];
/// Arrays of those ranges.
const RANGE_ARRAYS: &[u32] = &[3905, 3927, 3907];

/// Types whose binary form is never read for numbers (bytes, text, JSON,
/// booleans, times, UUIDs): everything else of a type not known here (a
/// named composite type, an array of one) is tried as a record or an
/// array, whose binary forms name their fields' and elements' types.
const PLAIN: &[u32] = &[
    16, 17, 18, 19, 25, 114, 142, 705, 1042, 1043, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 3802,
    869, 650, 829, 774, 1560, 1562, 27, 28, 29, 3220,
];

/// How deep arrays of records of arrays are followed.
const MAX_DEPTH: u8 = 8;

/// Whether values of type `oid` in binary format may hold numbers this
/// module reads: the numeric types, records, ranges and arrays of them,
/// and any type not known to hold none (a named composite type).
pub(crate) fn holds_numbers(oid: u32) -> bool {
    !PLAIN.contains(&oid)
}

/// The numbers in `value` (binary format, type `oid`), one per line, as
/// PostgreSQL would print them; `None` when the bytes are not what the
/// type says (the caller then withholds rather than guesses).
pub(crate) fn numbers(oid: u32, value: &[u8]) -> Option<String> {
    let mut out = String::new();
    read(oid, value, &mut out, 0)?;
    Some(out)
}

fn read(oid: u32, v: &[u8], out: &mut String, depth: u8) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let line = |out: &mut String, text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    match oid {
        INT2 => line(out, &i16::from_be_bytes(v.try_into().ok()?).to_string()),
        INT4 => line(out, &i32::from_be_bytes(v.try_into().ok()?).to_string()),
        INT8 | MONEY => line(out, &i64::from_be_bytes(v.try_into().ok()?).to_string()),
        OID => line(out, &u32::from_be_bytes(v.try_into().ok()?).to_string()),
        FLOAT4 => line(
            out,
            &float(f64::from(f32::from_be_bytes(v.try_into().ok()?))),
        ),
        FLOAT8 => line(out, &float(f64::from_be_bytes(v.try_into().ok()?))),
        NUMERIC => line(out, &numeric(v)?),
        RECORD => record(v, out, depth)?,
        XID8 => line(out, &u64::from_be_bytes(v.try_into().ok()?).to_string()),
        _ if SNAPSHOTS.contains(&oid) => {
            let mut r = Reader(v);
            let listed = r.i32()?;
            let mut text = String::new();
            for _ in 0..listed.checked_add(2)? {
                text.push_str(&u64::from_be_bytes(r.take(8)?.try_into().ok()?).to_string());
                text.push(':');
            }
            line(out, &text);
        }
        _ if VECTORS.contains(&oid) => {
            let mut items = String::new();
            array(v, &mut items, depth)?;
            line(out, items.trim_end().replace('\n', " ").as_str());
        }
        _ if GEOMETRY.iter().any(|(g, _)| *g == oid) => {
            let skip = GEOMETRY
                .iter()
                .find(|(g, _)| *g == oid)
                .map_or(0, |(_, n)| *n);
            let coords = v.get(skip..)?;
            if coords.len() % 8 != 0 {
                return None;
            }
            let text: Vec<String> = coords
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok().map(f64::from_be_bytes))
                .map(float)
                .collect();
            line(out, &text.join(","));
        }
        _ if ARRAYS.contains(&oid) || RANGE_ARRAYS.contains(&oid) => array(v, out, depth)?,
        _ => {
            if let Some(&(_, element)) = RANGES.iter().find(|(r, _)| *r == oid) {
                range(element, v, out, depth)?;
            } else if let Some(&(_, element)) = MULTIRANGES.iter().find(|(r, _)| *r == oid) {
                let mut r = Reader(v);
                for _ in 0..r.i32()? {
                    range(element, r.value()?.unwrap_or_default(), out, depth)?;
                }
            } else if holds_numbers(oid) {
                // A type not known here: a named composite type or an
                // array of one is read as such when its bytes are exactly
                // that; anything else holds no number this module reads.
                let mut tried = String::new();
                if array(v, &mut tried, depth).is_some() || record(v, &mut tried, depth).is_some() {
                    out.push_str(&tried);
                } else {
                    // A domain over a number (in an array or a record, where
                    // only its own OID is given) is the number's bytes: read
                    // as every number it could be.
                    guess_number(v, out);
                }
            }
        }
    }
    Some(())
}

/// The numbers the bytes of an unknown type could be: an int of their
/// length, a float8, a numeric whose header accounts for every byte.
fn guess_number(v: &[u8], out: &mut String) {
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    match v.len() {
        2 => line(i16::from_be_bytes([v[0], v[1]]).to_string()),
        4 => line(i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        8 => {
            let b: [u8; 8] = [v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]];
            line(i64::from_be_bytes(b).to_string());
            line(float(f64::from_be_bytes(b)));
        }
        _ => {}
    }
    let digits = v.get(0..2).map(|d| i16::from_be_bytes([d[0], d[1]]));
    if digits
        .and_then(|d| usize::try_from(d).ok())
        .map(|d| 8 + 2 * d)
        == Some(v.len())
    {
        if let Some(text) = numeric(v) {
            line(text);
        }
    }
}

/// A record's binary form: field count, then each field's type and value.
/// Every byte must be accounted for.
fn record(v: &[u8], out: &mut String, depth: u8) -> Option<()> {
    let mut r = Reader(v);
    let fields = r.i32()?;
    if !(0..=1600).contains(&fields) {
        return None;
    }
    for _ in 0..fields {
        let field_oid = r.u32()?;
        if let Some(bytes) = r.value()? {
            if holds_numbers(field_oid) {
                read(field_oid, bytes, out, depth + 1)?;
            }
        }
    }
    r.0.is_empty().then_some(())
}

/// An array's binary form: dimensions, a NULL flag, the element type, each
/// dimension's length and lower bound, then the elements. Every byte must
/// be accounted for.
fn array(v: &[u8], out: &mut String, depth: u8) -> Option<()> {
    let mut r = Reader(v);
    let dims = r.i32()?;
    if !(0..=6).contains(&dims) {
        return None;
    }
    let has_nulls = r.i32()?;
    if !(0..=1).contains(&has_nulls) {
        return None;
    }
    let element = r.u32()?;
    let mut count: i64 = if dims == 0 { 0 } else { 1 };
    for _ in 0..dims {
        count = count.checked_mul(i64::from(r.i32()?.max(0)))?;
        let _lower_bound = r.i32()?;
    }
    for _ in 0..count {
        if let Some(bytes) = r.value()? {
            if holds_numbers(element) {
                read(element, bytes, out, depth + 1)?;
            }
        }
    }
    r.0.is_empty().then_some(())
}

/// A range's binary form: flags, then the bounds it has.
fn range(element: u32, v: &[u8], out: &mut String, depth: u8) -> Option<()> {
    const EMPTY: u8 = 0x01;
    const LOWER_INFINITE: u8 = 0x08;
    const UPPER_INFINITE: u8 = 0x10;
    let mut r = Reader(v);
    let flags = *r.take(1)?.first()?;
    if flags & EMPTY != 0 {
        return Some(());
    }
    for infinite in [LOWER_INFINITE, UPPER_INFINITE] {
        if flags & infinite == 0 {
            if let Some(bytes) = r.value()? {
                read(element, bytes, out, depth + 1)?;
            }
        }
    }
    Some(())
}

/// A float as decimal text where a card could be in it (below 1e20, the
/// way PostgreSQL prints such values in full), else in exponent form: a
/// float's plain decimal form can be hundreds of digits, and no card.
fn float(f: f64) -> String {
    if f == 0.0 || (1e-4..1e20).contains(&f.abs()) {
        f.to_string()
    } else {
        format!("{f:e}")
    }
}

/// A `numeric` in its binary form: digit count, weight (of the first
/// base-10000 digit), sign, display scale, then the digits. A run of more
/// than 20 digits holds no card (the detectors want it bounded), so an
/// integer part that long is written out as nothing and a fraction is cut
/// at 21 digits: a numeric of ten bytes can print as 131,072 digits.
fn numeric(v: &[u8]) -> Option<String> {
    let mut r = Reader(v);
    let ndigits = usize::try_from(r.i16()?).ok()?;
    let weight = i32::from(r.i16()?);
    let sign = r.u16()?;
    let dscale = usize::try_from(r.i16()?).ok()?;
    let digits: Vec<u16> = (0..ndigits).map(|_| r.u16()).collect::<Option<_>>()?;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    if weight > 5 {
        return Some(String::new());
    }
    // 21 fraction digits already hold no card: the rest need not be written.
    let dscale = dscale.min(21);
    let digit = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit(0).to_string());
        for i in 1..=weight {
            text.push_str(&format!("{:04}", digit(i)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Some(text)
}

/// Big-endian fields off the front of a value.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2)?.try_into().ok().map(i16::from_be_bytes)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)?.try_into().ok().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }
    /// A length-prefixed value; `Some(None)` for NULL (length -1).
    fn value(&mut self) -> Option<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Some(None),
            n => self.take(usize::try_from(n).ok()?).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn numeric_bytes(ndigits: &[u16], weight: i16, sign: u16, dscale: i16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(ndigits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn scalars_read_as_postgres_prints_them() {
        let card = 4_111_111_111_111_111i64;
        assert_eq!(
            numbers(INT8, &card.to_be_bytes()).unwrap(),
            "4111111111111111\n"
        );
        assert_eq!(numbers(INT4, &(-7i32).to_be_bytes()).unwrap(), "-7\n");
        assert_eq!(
            numbers(FLOAT8, &(card as f64).to_be_bytes()).unwrap(),
            "4111111111111111\n"
        );
        // 4111 1111 1111 1111 in base 10000, weight 3.
        let n = numeric_bytes(&[4111, 1111, 1111, 1111], 3, 0, 0);
        assert_eq!(numbers(NUMERIC, &n).unwrap(), "4111111111111111\n");
        let n = numeric_bytes(&[12, 3400], 0, 0x4000, 3);
        assert_eq!(numbers(NUMERIC, &n).unwrap(), "-12.340\n");
        let n = numeric_bytes(&[5], -1, 0, 4);
        assert_eq!(numbers(NUMERIC, &n).unwrap(), "0.0005\n");
        // Very long numbers are written out as nothing, not as megabytes.
        let n = numeric_bytes(&[1], 32_767, 0, 0);
        assert_eq!(numbers(NUMERIC, &n).unwrap(), "\n");
        assert!(numbers(FLOAT8, &1e300f64.to_be_bytes()).unwrap().len() < 16);
        // Wrong lengths are not read as anything.
        assert_eq!(numbers(INT8, &[1, 2, 3]), None);
        assert_eq!(numbers(NUMERIC, &[0, 9]), None);
    }

    #[test]
    fn arrays_and_records_are_followed() {
        let card = 4_111_111_111_111_111i64.to_be_bytes();
        // int8[] of two, the second NULL.
        let mut a = Vec::new();
        for x in [1i32, 1, INT8 as i32, 2, 1] {
            a.extend_from_slice(&x.to_be_bytes());
        }
        a.extend_from_slice(&8i32.to_be_bytes());
        a.extend_from_slice(&card);
        a.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(numbers(1016, &a).unwrap(), "4111111111111111\n");
        // row('x', card::bigint).
        let mut r = Vec::new();
        r.extend_from_slice(&2i32.to_be_bytes());
        r.extend_from_slice(&25u32.to_be_bytes());
        r.extend_from_slice(&1i32.to_be_bytes());
        r.push(b'x');
        r.extend_from_slice(&INT8.to_be_bytes());
        r.extend_from_slice(&8i32.to_be_bytes());
        r.extend_from_slice(&card);
        assert_eq!(numbers(RECORD, &r).unwrap(), "4111111111111111\n");
        // A truncated one is not read.
        assert_eq!(numbers(RECORD, &r[..r.len() - 1]), None);
        // A named composite type (an OID not known here) holding a card,
        // and an int8range whose lower bound is one.
        assert_eq!(numbers(16_385, &r).unwrap(), "4111111111111111\n");
        let mut range = vec![0x02u8];
        range.extend_from_slice(&8i32.to_be_bytes());
        range.extend_from_slice(&card);
        range.extend_from_slice(&8i32.to_be_bytes());
        range.extend_from_slice(&4_111_111_111_111_112i64.to_be_bytes());
        assert!(numbers(3926, &range)
            .unwrap()
            .starts_with("4111111111111111\n"));
        // Casts that keep a card whole: xid8, a snapshot, int2vector, a point.
        assert_eq!(
            numbers(XID8, &4_111_111_111_111_111u64.to_be_bytes()).unwrap(),
            "4111111111111111\n"
        );
        let mut snap = 0i32.to_be_bytes().to_vec();
        snap.extend_from_slice(&4_111_111_111_111_111u64.to_be_bytes());
        snap.extend_from_slice(&4_111_111_111_111_111u64.to_be_bytes());
        assert_eq!(
            numbers(5038, &snap).unwrap(),
            "4111111111111111:4111111111111111:\n"
        );
        let mut vector = Vec::new();
        for x in [1i32, 0, INT2 as i32, 4, 0] {
            vector.extend_from_slice(&x.to_be_bytes());
        }
        for g in [4111i16, 1111, 1111, 1111] {
            vector.extend_from_slice(&2i32.to_be_bytes());
            vector.extend_from_slice(&g.to_be_bytes());
        }
        assert_eq!(numbers(22, &vector).unwrap(), "4111 1111 1111 1111\n");
        let mut point = 378_282_246_310_005f64.to_be_bytes().to_vec();
        point.extend_from_slice(&0f64.to_be_bytes());
        assert_eq!(numbers(600, &point).unwrap(), "378282246310005,0\n");
        // Bytes of a type known to hold no numbers are not read as any.
        assert_eq!(numbers(17, &r).unwrap(), "");
        // An unknown type whose bytes are no record, array or number: nothing.
        assert_eq!(numbers(16_385, b"abc").unwrap(), "");
        // A domain over int8 or numeric, in an array (only its OID given).
        let mut a = Vec::new();
        for x in [1i32, 0, 16_386, 1, 1] {
            a.extend_from_slice(&x.to_be_bytes());
        }
        a.extend_from_slice(&8i32.to_be_bytes());
        a.extend_from_slice(&card);
        assert!(numbers(16_387, &a)
            .unwrap()
            .starts_with("4111111111111111\n"));
        let n = numeric_bytes(&[4111, 1111, 1111, 1111], 3, 0, 0);
        assert_eq!(numbers(16_388, &n).unwrap(), "4111111111111111\n");
        // An array claiming more elements than it holds is not either.
        let mut huge = Vec::new();
        for x in [1i32, 0, INT8 as i32, i32::MAX, 1] {
            huge.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(numbers(1016, &huge), None);
    }
}
