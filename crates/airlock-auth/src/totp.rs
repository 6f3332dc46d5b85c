//! TOTP step-up (RFC 6238 as every authenticator app reads it: SHA-1, six
//! digits, 30-second steps): new secrets, the `otpauth://` URI and its QR
//! code, and which time step a code belongs to. Accepting a code once is
//! the caller's part: it records the step as used in the store, where a
//! second use is refused on every node.

use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

/// The issuer authenticator apps show.
pub const ISSUER: &str = "Airlock";
/// Seconds per code.
pub const STEP: u64 = 30;

/// Why an enrolment could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a TOTP enrolment: {0}")]
pub struct TotpError(String);

/// A fresh 160-bit secret (RFC 4226's recommended length).
pub fn new_secret() -> Zeroizing<Vec<u8>> {
    let mut s = Zeroizing::new(vec![0u8; 20]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, s.as_mut_slice());
    s
}

fn totp(secret: &[u8], user: &str) -> Result<TOTP, TotpError> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP,
        secret.to_vec(),
        Some(ISSUER.to_owned()),
        user.to_owned(),
    )
    .map_err(|e| TotpError(e.to_string()))
}

/// `otpauth://totp/Airlock:USER?secret=…&issuer=Airlock&algorithm=SHA1&digits=6&period=30`:
/// the defaults every app assumes, written out for parsers that do not.
pub fn uri(secret: &[u8], user: &str) -> Result<String, TotpError> {
    let mut uri = totp(secret, user)?.get_url();
    for (key, value) in [("algorithm", "SHA1"), ("digits", "6"), ("period", "30")] {
        if !uri.contains(&format!("{key}=")) {
            uri.push_str(&format!("&{key}={value}"));
        }
    }
    Ok(uri)
}

/// The URI as a QR code, an SVG image.
pub fn qr_svg(uri: &str) -> Result<String, TotpError> {
    let code = qrcode::QrCode::new(uri.as_bytes()).map_err(|e| TotpError(e.to_string()))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

/// The time step `code` is valid for at `now` (Unix seconds), allowing one
/// step of clock drift either way; `None` if it is not a current code.
pub fn step_of(secret: &[u8], user: &str, code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, user).ok()?;
    let now_step = now / STEP;
    [now_step.saturating_sub(1), now_step, now_step + 1]
        .into_iter()
        .find(|step| {
            let expected = t.generate(step * STEP);
            bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_matched_to_their_step() {
        // RFC 6238's SHA-1 test secret and vectors (last six digits).
        let secret = b"12345678901234567890";
        assert_eq!(step_of(secret, "alice", "287082", 59), Some(1));
        assert_eq!(
            step_of(secret, "alice", "081804", 1_111_111_109),
            Some(37_037_036)
        );
        assert_eq!(
            step_of(secret, "alice", "050471", 1_111_111_111),
            Some(37_037_037)
        );
        // One step of drift either way, no more.
        assert_eq!(
            step_of(secret, "alice", "081804", 1_111_111_109 + 30),
            Some(37_037_036)
        );
        assert_eq!(step_of(secret, "alice", "081804", 1_111_111_109 + 61), None);
        for bad in ["", "28708", "2870822", "28708a", "000000"] {
            assert_eq!(step_of(secret, "alice", bad, 59), None, "{bad:?}");
        }
        let u = uri(&new_secret(), "alice").unwrap();
        assert!(u.starts_with("otpauth://totp/Airlock:alice?secret="), "{u}");
        assert!(u.contains("issuer=Airlock"), "{u}");
        for p in ["algorithm=SHA1", "digits=6", "period=30"] {
            assert_eq!(u.matches(p).count(), 1, "{u}");
        }
        assert!(qr_svg(&u).unwrap().starts_with("<?xml"));
    }
}
