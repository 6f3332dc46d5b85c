//! A labelled corpus generator for measuring the scanner: realistic
//! documents (CSV exports, JSON API responses, logs, emails, config files)
//! with planted true values (labels with their byte offsets) and look-alike
//! negatives that must not be reported. Deterministic from a seed; no
//! outside data. Used by the precision/recall test and `bench/dlp.sh`.

use base64::Engine as _;

use crate::Kind;

/// One planted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Its type.
    pub kind: Kind,
}

/// A generated corpus.
#[derive(Debug, Default)]
pub struct Doc {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Every planted value, in order.
    pub labels: Vec<Label>,
}

/// A small deterministic generator (xorshift64*): the corpus must be the
/// same on every machine, and needs no cryptographic quality.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    fn chars_from(&mut self, set: &[u8], n: usize) -> String {
        (0..n).map(|_| char::from(*self.pick(set))).collect()
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_NUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const HEX: &[u8] = b"0123456789abcdef";
const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "zoe",
];
const LAST: &[&str] = &[
    "smith", "jones", "garcia", "miller", "davis", "martin", "lee", "walker", "hall", "young",
    "king", "wright", "lopez", "hill", "scott", "green", "adams", "baker", "nelson", "carter",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "corp.example.net",
    "example.co.uk",
    "shop.example.io",
];
const WORDS: &[&str] = &[
    "the",
    "order",
    "was",
    "shipped",
    "please",
    "review",
    "attached",
    "invoice",
    "customer",
    "account",
    "updated",
    "request",
    "service",
    "deploy",
    "version",
    "build",
    "status",
    "ok",
    "payment",
    "received",
    "thanks",
    "regards",
    "meeting",
    "tomorrow",
    "report",
    "quarterly",
];

/// Builds a document while recording the offsets of planted values.
#[derive(Debug)]
struct W {
    doc: Doc,
    rng: Rng,
}

impl W {
    fn t(&mut self, s: &str) {
        self.doc.bytes.extend_from_slice(s.as_bytes());
    }
    fn plant(&mut self, kind: Kind, v: &str) {
        let start = self.doc.bytes.len();
        self.t(v);
        self.doc.labels.push(Label {
            start,
            end: self.doc.bytes.len(),
            kind,
        });
    }
    fn words(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| *self.rng.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    }

    // ---- true values ----

    fn name(&mut self) -> (String, String) {
        (
            (*self.rng.pick(FIRST)).to_owned(),
            (*self.rng.pick(LAST)).to_owned(),
        )
    }
    fn email(&mut self) -> String {
        let (f, l) = self.name();
        let sep = *self.rng.pick(&[".", "_", "", "+shop."]);
        format!("{f}{sep}{l}@{}", self.rng.pick(DOMAINS))
    }
    fn card_digits(&mut self) -> (Vec<u8>, bool) {
        let (prefix, len): (&str, usize) = *self.rng.pick(&[
            ("4", 16),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("34", 15),
            ("37", 15),
            ("6011", 16),
            ("3530", 16),
        ]);
        let mut d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
        while d.len() < len - 1 {
            d.push(self.rng.below(10) as u8);
        }
        // Luhn check digit.
        let check = (0..10u8)
            .find(|c| {
                let mut t = d.clone();
                t.push(*c);
                crate::detectors::luhn(&t)
            })
            .unwrap_or(0);
        d.push(check);
        (d, len == 15)
    }
    fn format_card(&mut self, d: &[u8], amex: bool) -> String {
        let s: String = d.iter().map(|x| char::from(b'0' + x)).collect();
        let sep = *self.rng.pick(&["", " ", "-"]);
        if sep.is_empty() {
            return s;
        }
        let groups: &[usize] = if amex { &[4, 6, 5] } else { &[4, 4, 4, 4] };
        let mut out = Vec::new();
        let mut i = 0;
        for g in groups {
            out.push(&s[i..i + g]);
            i += g;
        }
        out.join(sep)
    }
    fn card(&mut self) -> String {
        let (d, amex) = self.card_digits();
        self.format_card(&d, amex)
    }
    fn ssn_parts(&mut self) -> (u64, u64, u64) {
        let mut area = self.rng.range(1, 899);
        if area == 666 {
            area = 665;
        }
        (area, self.rng.range(1, 99), self.rng.range(1, 9999))
    }
    fn ssn(&mut self) -> String {
        let (a, g, s) = self.ssn_parts();
        let sep = *self.rng.pick(&["-", "-", " "]);
        format!("{a:03}{sep}{g:02}{sep}{s:04}")
    }
    fn iban(&mut self, valid: bool) -> String {
        let (cc, bban) = match self.rng.below(5) {
            0 => ("DE", self.rng.digits(18)),
            1 => (
                "GB",
                format!(
                    "{}{}",
                    self.rng.pick(&["WEST", "NWBK", "BARC"]),
                    self.rng.digits(14)
                ),
            ),
            2 => ("FR", self.rng.digits(23)),
            3 => (
                "NL",
                format!(
                    "{}{}",
                    self.rng.pick(&["ABNA", "INGB", "RABO"]),
                    self.rng.digits(10)
                ),
            ),
            _ => ("ES", self.rng.digits(20)),
        };
        let probe = format!("{cc}00{bban}");
        let r = crate::detectors::iban_mod97(probe.as_bytes());
        let mut check = (98 + 97 - r) % 97;
        if check < 2 {
            check += 97;
        }
        if !valid {
            check = if check == 98 { 2 } else { check + 1 };
        }
        let compact = format!("{cc}{check:02}{bban}");
        if self.rng.chance(50) {
            compact
        } else {
            compact
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
    fn phone(&mut self) -> String {
        let area = self.rng.range(201, 989);
        let ex = self.rng.range(200, 999);
        let line = self.rng.digits(4);
        match self.rng.below(5) {
            0 => format!("({area}) {ex}-{line}"),
            1 => format!("{area}-{ex}-{line}"),
            2 => format!("+1 {area} {ex} {line}"),
            3 => format!("+44 20 {} {}", self.rng.digits(4), self.rng.digits(4)),
            _ => format!("+49 30 {}", self.rng.digits(8)),
        }
    }
    fn ipv4(&mut self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.rng.range(1, 223),
            self.rng.below(256),
            self.rng.below(256),
            self.rng.range(1, 254)
        )
    }
    fn aws_key_id(&mut self) -> String {
        let p = *self.rng.pick(&["AKIA", "ASIA"]);
        format!("{p}{}", self.rng.chars_from(UPPER_NUM, 16))
    }
    fn aws_secret(&mut self) -> String {
        loop {
            let s = self.rng.chars_from(B64, 40);
            let b = s.as_bytes();
            if b.iter().any(u8::is_ascii_uppercase)
                && b.iter().any(u8::is_ascii_lowercase)
                && b.iter().any(u8::is_ascii_digit)
            {
                return s;
            }
        }
    }
    fn github(&mut self) -> String {
        if self.rng.chance(20) {
            format!(
                "github_pat_{}_{}",
                self.rng.chars_from(ALNUM, 22),
                self.rng.chars_from(ALNUM, 59)
            )
        } else {
            let p = *self.rng.pick(&["ghp", "gho", "ghu", "ghs", "ghr"]);
            format!("{p}_{}", self.rng.chars_from(ALNUM, 36))
        }
    }
    fn slack(&mut self) -> String {
        let p = *self.rng.pick(&["xoxb", "xoxp", "xoxa"]);
        format!(
            "{p}-{}-{}-{}",
            self.rng.digits(12),
            self.rng.digits(13),
            self.rng.chars_from(ALNUM, 24)
        )
    }
    fn stripe(&mut self) -> String {
        let p = *self.rng.pick(&["sk_live_", "rk_live_"]);
        let n = self.rng.range(24, 40) as usize;
        format!("{p}{}", self.rng.chars_from(ALNUM, n))
    }
    fn google(&mut self) -> String {
        format!(
            "AIza{}",
            self.rng.chars_from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
                35
            )
        )
    }
    fn jwt(&mut self, valid: bool) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = if valid {
            r#"{"alg":"HS256","typ":"JWT"}"#.to_owned()
        } else {
            r#"{"typ":"JWT","kid":"k1"}"#.to_owned()
        };
        let (f, _) = self.name();
        let payload = format!(
            r#"{{"sub":"{f}","iat":{},"scope":"read write"}}"#,
            1_700_000_000 + self.rng.below(10_000_000)
        );
        let sig: String = self.rng.chars_from(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
            43,
        );
        format!("{}.{}.{sig}", e.encode(header), e.encode(payload))
    }
    fn pem_body(&mut self) -> String {
        let lines = self.rng.range(8, 25);
        (0..lines)
            .map(|_| self.rng.chars_from(B64, 64))
            .collect::<Vec<_>>()
            .join("\n")
    }

    // ---- documents ----

    fn csv(&mut self) {
        self.t("id,name,email,phone,card,ssn,iban,ip,order,amount,created\n");
        for i in 0..self.rng.range(5, 30) {
            let (f, l) = self.name();
            let text = format!("{i},{f} {l},");
            self.t(&text);
            let v = self.email();
            self.plant(Kind::Email, &v);
            self.t(",");
            let v = self.phone();
            self.plant(Kind::Phone, &v);
            self.t(",");
            if self.rng.chance(70) {
                let v = self.card();
                self.plant(Kind::CreditCard, &v);
            } else {
                // Luhn-failing look-alike.
                let (mut d, amex) = self.card_digits();
                let last = d.len() - 1;
                d[last] = (d[last] + 1) % 10;
                let v = self.format_card(&d, amex);
                self.t(&v);
            }
            self.t(",");
            if self.rng.chance(70) {
                let v = self.ssn();
                self.plant(Kind::UsSsn, &v);
            } else {
                let bad = *self.rng.pick(&["000", "666", "900", "987"]);
                let v = format!(
                    "{bad}-{:02}-{:04}",
                    self.rng.range(1, 99),
                    self.rng.range(1, 9999)
                );
                self.t(&v);
            }
            self.t(",");
            if self.rng.chance(70) {
                let v = self.iban(true);
                self.plant(Kind::Iban, &v);
            } else {
                let v = self.iban(false);
                self.t(&v);
            }
            self.t(",");
            let v = self.ipv4();
            self.plant(Kind::Ipv4, &v);
            let order = self.rng.digits(8);
            let amount = self.rng.range(1, 99_999);
            let date = format!(
                "2024-{:02}-{:02}",
                self.rng.range(1, 12),
                self.rng.range(1, 28)
            );
            let text = format!(
                ",ORD-{order},{}.{:02},{date}\n",
                amount,
                self.rng.below(100)
            );
            self.t(&text);
        }
        self.t("\n");
    }

    fn json(&mut self) {
        self.t("{\"data\":[");
        for i in 0..self.rng.range(2, 8) {
            if i > 0 {
                self.t(",");
            }
            let uuid = format!(
                "{}-{}-4{}-a{}-{}",
                self.rng.chars_from(HEX, 8),
                self.rng.chars_from(HEX, 4),
                self.rng.chars_from(HEX, 3),
                self.rng.chars_from(HEX, 3),
                self.rng.chars_from(HEX, 12)
            );
            let text = format!("{{\"id\":\"{uuid}\",\"email\":\"");
            self.t(&text);
            let v = self.email();
            self.plant(Kind::Email, &v);
            self.t("\",\"token\":\"");
            if self.rng.chance(60) {
                let v = self.jwt(true);
                self.plant(Kind::Jwt, &v);
            } else {
                let v = self.jwt(false);
                self.t(&v);
            }
            let blob =
                base64::engine::general_purpose::STANDARD.encode(self.rng.chars_from(ALNUM, 48));
            let text = format!(
                "\",\"avatar\":\"data:image/png;base64,{blob}\",\"sha256\":\"{}\",\"created\":\"2024-03-{:02}T10:{:02}:00Z\",\"ts\":{}}}",
                self.rng.chars_from(HEX, 64),
                self.rng.range(1, 28),
                self.rng.below(60),
                1_700_000_000 + self.rng.below(10_000_000)
            );
            self.t(&text);
        }
        self.t("],\"next\":null}\n");
    }

    fn log(&mut self) {
        for _ in 0..self.rng.range(5, 25) {
            let ts = format!(
                "2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                self.rng.range(1, 28),
                self.rng.below(24),
                self.rng.below(60),
                self.rng.below(60),
                self.rng.below(1000)
            );
            let text = format!("{ts} INFO request from ");
            self.t(&text);
            let v = self.ipv4();
            self.plant(Kind::Ipv4, &v);
            let ver = format!(
                "{}.{}.{}.{}.{}",
                self.rng.below(10),
                self.rng.below(20),
                self.rng.below(100),
                self.rng.below(100),
                self.rng.below(1000)
            );
            let text = format!(
                " agent=client/{ver} build v{}.{}.{}.{} req={} commit={} took={}ms\n",
                self.rng.below(10),
                self.rng.below(10),
                self.rng.below(10),
                self.rng.below(10),
                self.rng.chars_from(HEX, 16),
                self.rng.chars_from(HEX, 40),
                self.rng.below(5000)
            );
            self.t(&text);
            if self.rng.chance(10) {
                // Look-alikes no validator can tell apart: a four-part
                // firmware version and a part number shaped like a phone
                // number. Counted against ipv4 and phone precision.
                let text = format!(
                    "{ts} INFO firmware {}.{}.{}.{} installed, part SKU {}-{}-{}-B\n",
                    self.rng.range(1, 12),
                    self.rng.below(10),
                    self.rng.below(10),
                    self.rng.range(1, 99),
                    self.rng.range(201, 989),
                    self.rng.range(200, 999),
                    self.rng.digits(4)
                );
                self.t(&text);
            }
            if self.rng.chance(20) {
                let text = format!("{ts} WARN auth failed for user ");
                self.t(&text);
                let v = self.email();
                self.plant(Kind::Email, &v);
                self.t(" key=");
                let v = self.aws_key_id();
                self.plant(Kind::AwsAccessKeyId, &v);
                let text = format!(" trace=AKIA{}\n", self.rng.chars_from(UPPER_NUM, 10));
                self.t(&text);
            }
        }
        self.t("\n");
    }

    fn email_msg(&mut self) {
        self.t("From: ");
        let v = self.email();
        self.plant(Kind::Email, &v);
        self.t("\nTo: ");
        let v = self.email();
        self.plant(Kind::Email, &v);
        let w = self.words(12);
        let text = format!("\nSubject: {w}\n\nHi,\n\n{w}. ");
        self.t(&text);
        let w = self.words(20);
        let text = format!("{w}. My SSN is ");
        self.t(&text);
        let (a, g, s) = self.ssn_parts();
        self.plant(Kind::UsSsn, &format!("{a:03}{g:02}{s:04}"));
        let text = format!(
            " and the order number is {} (ref 000-{:02}-{:04}).\n",
            self.rng.digits(9),
            self.rng.range(1, 99),
            self.rng.range(1, 9999)
        );
        self.t(&text);
        self.t("Please wire to ");
        let v = self.iban(true);
        self.plant(Kind::Iban, &v);
        let text = format!(", not the old account {}.\n\nCall me at ", self.iban(false));
        self.t(&text);
        let v = self.phone();
        self.plant(Kind::Phone, &v);
        let text = format!(
            " or on the office line.\nTracking: 1Z{} — card on file ends {}.\n\n-- \n",
            self.rng.chars_from(UPPER_NUM, 16),
            self.rng.digits(4)
        );
        self.t(&text);
        let (f, l) = self.name();
        let text = format!("{f} {l}\n\n");
        self.t(&text);
    }

    fn config(&mut self) {
        self.t("# service configuration\n[aws]\naws_access_key_id = ");
        let v = self.aws_key_id();
        self.plant(Kind::AwsAccessKeyId, &v);
        self.t("\naws_secret_access_key = ");
        let v = self.aws_secret();
        self.plant(Kind::AwsSecretAccessKey, &v);
        let text = format!(
            "\nbucket_etag = \"{}\"\nsession_hash = {}\n\n[tokens]\ngithub = \"",
            self.rng.chars_from(HEX, 40),
            self.rng.chars_from(B64, 40)
        );
        self.t(&text);
        let v = self.github();
        self.plant(Kind::GithubToken, &v);
        let text = format!(
            "\"\ngithub_example = \"ghp_{}\"\nslack = \"",
            self.rng.chars_from(ALNUM, 20)
        );
        self.t(&text);
        let v = self.slack();
        self.plant(Kind::SlackToken, &v);
        self.t("\"\nstripe = \"");
        let v = self.stripe();
        self.plant(Kind::StripeSecretKey, &v);
        let text = format!(
            "\"\nstripe_test = \"sk_test_{}\"\ngoogle_maps = \"",
            self.rng.chars_from(ALNUM, 24)
        );
        self.t(&text);
        let v = self.google();
        self.plant(Kind::GoogleApiKey, &v);
        self.t("\"\n\n[database]\nurl = \"postgres://app:");
        let pw = self.rng.chars_from(ALNUM, 16);
        self.plant(Kind::UrlPassword, &pw);
        let text = format!(
            "@db{}.internal:5432/app\"\nreplica = \"postgres://readonly@replica.internal/app\"\ntemplate = \"mysql://root:${{DB_PASSWORD}}@localhost/x\"\n\n",
            self.rng.below(10)
        );
        self.t(&text);
        if self.rng.chance(40) {
            self.t("[tls]\nkey = \"\"\"\n");
            let label = *self
                .rng
                .pick(&["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY"]);
            let v = format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----",
                self.pem_body()
            );
            self.plant(Kind::PrivateKey, &v);
            let text = format!(
                "\n\"\"\"\ncert = \"\"\"\n-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n\"\"\"\n\n",
                self.pem_body()
            );
            self.t(&text);
        }
    }

    /// A credentials file as JSON writers escape it: a service account's
    /// key with its line breaks written `\n`, a database URL with its
    /// slashes written `\/`, an address with `@` written `\u0040`; and
    /// beside them a public key and password-less URLs, escaped alike.
    fn credentials_json(&mut self) {
        self.t("{\n  \"type\": \"service_account\",\n  \"private_key\": \"");
        let label = *self.rng.pick(&["PRIVATE KEY", "RSA PRIVATE KEY"]);
        let v = format!(
            "-----BEGIN {label}-----\\n{}\\n-----END {label}-----",
            self.pem_body().replace('\n', "\\n")
        );
        self.plant(Kind::PrivateKey, &v);
        let text = format!(
            "\\n\",\n  \"public_key\": \"-----BEGIN PUBLIC KEY-----\\n{}\\n-----END PUBLIC KEY-----\\n\",\n  \"client_email\": \"",
            self.pem_body().replace('\n', "\\n")
        );
        self.t(&text);
        let v = self.email();
        let v = if self.rng.chance(50) {
            v.replace('@', "\\u0040")
        } else {
            v
        };
        self.plant(Kind::Email, &v);
        self.t("\",\n  \"database\": \"postgres:\\/\\/app:");
        let pw = self.rng.chars_from(ALNUM, 16);
        self.plant(Kind::UrlPassword, &pw);
        let text = format!(
            "@db{}.internal:5432\\/app\",\n  \"token_uri\": \"https:\\/\\/oauth2.example.com\\/token\",\n  \"replica\": \"postgres:\\/\\/readonly@replica.internal\\/app\"\n}}\n",
            self.rng.below(10)
        );
        self.t(&text);
    }
}

/// Generates at least `min_len` bytes of mixed documents from `seed`.
pub fn generate(seed: u64, min_len: usize) -> Doc {
    let mut w = W {
        doc: Doc::default(),
        rng: Rng(seed | 1),
    };
    while w.doc.bytes.len() < min_len {
        match w.rng.below(6) {
            0 => w.csv(),
            1 => w.json(),
            2 => w.log(),
            3 => w.email_msg(),
            4 => w.credentials_json(),
            _ => w.config(),
        }
    }
    w.doc
}
