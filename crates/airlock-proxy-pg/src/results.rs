//! What leaves in result rows: each result set's columns (from its row
//! description, or the statement's, learned from the server's answers to
//! `Describe`), DLP on text columns (report, mask, block), whole columns
//! masked by name, a cap on rows, and, with `result_action`, the result
//! held back whole until Airlock decides on it (rows and DLP counts in
//! context, the result's SHA-256 bound in params, a masked preview for the
//! approver where configured).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use airlock_api::CheckBody;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::binary;
use crate::codec::{self, build, Field, Frame};
use crate::config::RowsDlp;
use crate::decide;

/// Type OIDs whose binary form is their text (text, varchar, bpchar,
/// name, json, unknown).
const TEXT_TYPES: &[u32] = &[25, 1043, 1042, 19, 114, 705];

impl Rules {
    /// The scanner, when `response_dlp` is not `off`.
    fn active_scanner(&self) -> Option<&airlock_dlp::Scanner> {
        self.scanner
            .as_deref()
            .filter(|_| self.mode != RowsDlp::Off)
    }
}

/// What a result-set policy needs, fixed per proxy.
pub(crate) struct Rules {
    pub mode: RowsDlp,
    pub scanner: Option<Arc<airlock_dlp::Scanner>>,
    pub mask_columns: Vec<String>,
    pub max_rows: Option<u64>,
    pub max_result_bytes: u64,
    pub preview_rows: usize,
}

/// What the reader tells the writer about a forwarded batch, so the
/// writer can tell which statement each result set comes from.
#[derive(Debug, Default, Clone)]
pub(crate) struct Plan {
    /// Statement names of the batch's `Describe 'S'`, in order.
    pub describes: Vec<String>,
    /// Portal names of the batch's `Describe 'P'`, in order.
    pub portal_describes: Vec<String>,
    /// For each `Execute`, its portal's and statement's server names and
    /// its result formats.
    pub executes: Vec<(String, String, Vec<i16>)>,
    /// With `result_action`: the checks of the statements whose results
    /// are decided (action set to the result action).
    pub result_checks: Vec<CheckBody>,
    /// For each Parse, Bind and Close sent, in order: whether Airlock added
    /// it (its one-message reply is not the client's and is dropped).
    pub simple: Vec<bool>,
}

impl Plan {
    /// This plan followed by `next` (a batch sent after a `Flush`, whose
    /// replies continue the same stream up to one `ReadyForQuery`).
    pub fn extend(&mut self, next: Plan) {
        self.describes.extend(next.describes);
        self.portal_describes.extend(next.portal_describes);
        self.executes.extend(next.executes);
        self.result_checks.extend(next.result_checks);
        self.simple.extend(next.simple);
    }
}

/// A column as the writer treats it.
#[derive(Clone)]
struct Column {
    name: String,
    /// Airlock may read and rewrite it as text.
    text: bool,
    /// Sent in binary, of a type holding numbers (its OID): read as the
    /// decimal text a text-format client would get.
    numbers: Option<u32>,
    /// How its text is read and rewritten.
    text_kind: TextKind,
}

/// Text-format values read other than as they are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Plain,
    /// `bytea`, written `\x` and hex: scanned decoded, masked and written
    /// back in hex of the same length.
    Bytea,
    /// A number type: masked digits are `9`s, so the client still reads a
    /// number.
    Number,
}

impl Column {
    fn new(name: &str, type_oid: u32, format: i16) -> Self {
        Column {
            name: name.to_owned(),
            text: format == 0 || TEXT_TYPES.contains(&type_oid),
            numbers: (format != 0 && binary::holds_numbers(type_oid)).then_some(type_oid),
            text_kind: match (format, type_oid) {
                (0, 17) => TextKind::Bytea,
                (0, oid) if binary::NUMBER_TYPES.contains(&oid) => TextKind::Number,
                _ => TextKind::Plain,
            },
        }
    }
}

/// What one row became.
pub(crate) enum RowOut {
    /// Send this frame (the row, masked or as it came).
    Send(Bytes),
    /// Send this error instead, and nothing more of this result.
    Stop(Bytes),
    /// Nothing (the rest of a stopped result).
    Drop,
}

/// A result set held back for its decision.
#[derive(Default)]
pub(crate) struct Held {
    pub frames: Vec<Bytes>,
    pub bytes: u64,
    pub rows: u64,
    pub dlp: BTreeMap<String, u64>,
    pub sha: Sha256,
    pub preview: Vec<Vec<Value>>,
}

/// One session's result sets, as they go by.
pub(crate) struct Results {
    rules: Arc<Rules>,
    /// Statement descriptions learned from `Describe 'S'` answers.
    statements: HashMap<String, Vec<Field>>,
    plan: Plan,
    describe_at: usize,
    /// The next `Describe 'P'` to be answered.
    portal_describe_at: usize,
    execute_at: usize,
    simple_at: usize,
    /// The next `RowDescription` answers a statement `Describe`.
    statement_describe: bool,
    /// The current result's columns, if known.
    columns: Option<Vec<Column>>,
    /// Rows of the current result so far.
    rows: u64,
    /// Rows already sent by portals suspended at an `Execute` row limit.
    suspended: HashMap<String, u64>,
    /// DLP counts of the current result so far.
    dlp: BTreeMap<String, u64>,
    stopped: bool,
    /// The current COPY OUT sends its rows in binary: no column types come
    /// with it, so DLP cannot read them.
    binary_copy: bool,
    /// The current result, held for its decision.
    pub held: Option<Held>,
}

impl Results {
    pub fn new(rules: Arc<Rules>) -> Self {
        Self {
            rules,
            statements: HashMap::new(),
            plan: Plan::default(),
            describe_at: 0,
            portal_describe_at: 0,
            execute_at: 0,
            simple_at: 0,
            statement_describe: false,
            columns: None,
            rows: 0,
            suspended: HashMap::new(),
            dlp: BTreeMap::new(),
            stopped: false,
            binary_copy: false,
            held: None,
        }
    }

    /// A new batch's plan (at the previous batch's `ReadyForQuery`).
    pub fn begin(&mut self, plan: Plan) {
        self.plan = plan;
        self.describe_at = 0;
        self.portal_describe_at = 0;
        self.execute_at = 0;
        self.simple_at = 0;
        self.statement_describe = false;
        // The per-result state, as a new batch's first result finds it
        // (not `end_result`, which would count an Execute of this batch).
        self.columns = None;
        self.rows = 0;
        self.dlp.clear();
        self.stopped = false;
        self.binary_copy = false;
    }

    /// More of the same stream's plan (a batch after a `Flush`).
    pub fn extend(&mut self, plan: Plan) {
        self.plan.extend(plan);
    }

    /// A ParseComplete, BindComplete or CloseComplete: whether it answers
    /// a message Airlock added (and is dropped).
    pub fn added_reply(&mut self) -> bool {
        let added = self
            .plan
            .simple
            .get(self.simple_at)
            .copied()
            .unwrap_or(false);
        self.simple_at += 1;
        added
    }

    /// Whether results of this batch are decided before they leave.
    pub fn decided(&self) -> bool {
        !self.plan.result_checks.is_empty()
    }

    /// `ParameterDescription`: a statement `Describe` is being answered.
    pub fn parameter_description(&mut self) {
        self.statement_describe = true;
    }

    /// `RowDescription` or `NoData` (`fields` None).
    pub fn describe(&mut self, body: Option<Bytes>) {
        let fields = body.and_then(|b| codec::row_description(b).ok());
        if self.statement_describe {
            self.statement_describe = false;
            if let Some(name) = self.plan.describes.get(self.describe_at).cloned() {
                self.describe_at += 1;
                match fields {
                    Some(f) => {
                        self.statements.insert(name, f);
                    }
                    None => {
                        self.statements.remove(&name);
                    }
                }
            }
            return;
        }
        // Answers come in order: while a `Describe 'P'` of the batch is
        // unanswered, this answers it (a simple query's own description
        // comes after). A portal's description describes the next result
        // only if that result is that portal's: a portal described, then
        // bound again (the unnamed one) or another portal run, would have
        // its binary values read with the text formats and types of the
        // description (found by a black-box pass: a bigint card number left
        // unmasked). Otherwise the result's columns come from its statement
        // and its own `Bind`, or are unknown (which fails closed where
        // binary values must be scanned).
        if let Some(described) = self.plan.portal_describes.get(self.portal_describe_at) {
            self.portal_describe_at += 1;
            let next = self.plan.executes.get(self.execute_at).map(|(p, _, _)| p);
            if next != Some(described) {
                self.columns = None;
                return;
            }
        }
        self.columns = fields.map(|f| {
            f.iter()
                .map(|c| Column::new(&c.name, c.type_oid, c.format))
                .collect()
        });
    }

    /// The current result's columns: its own description, else its
    /// statement's with the formats its `Bind` asked for.
    fn columns(&mut self) -> Option<&[Column]> {
        if self.columns.is_none() {
            let (_, stmt, formats) = self.plan.executes.get(self.execute_at)?;
            let fields = self.statements.get(stmt)?;
            self.columns = Some(
                fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| Column::new(&f.name, f.type_oid, codec::format_at(formats, i)))
                    .collect(),
            );
        }
        self.columns.as_deref()
    }

    /// The end of a result set (`CommandComplete`, `PortalSuspended`,
    /// `EmptyQueryResponse`, or an error).
    pub fn end_result(&mut self) {
        self.end_result_of(false);
    }

    /// The end of a result set; `suspended`: its portal stopped at the
    /// row limit of its `Execute` and may go on (`PortalSuspended`), so
    /// its rows keep counting towards `max_rows` across executions.
    pub fn end_result_of(&mut self, suspended: bool) {
        if let Some((portal, _, _)) = self.plan.executes.get(self.execute_at) {
            if suspended {
                // A portal cut short stays cut for the rest of its rows.
                let rows = if self.stopped { u64::MAX } else { self.rows };
                self.suspended.insert(portal.clone(), rows);
            } else {
                self.suspended.remove(portal);
            }
        }
        if !self.plan.executes.is_empty() {
            self.execute_at += 1;
        }
        self.columns = None;
        self.rows = 0;
        self.dlp.clear();
        self.stopped = false;
        self.binary_copy = false;
    }

    /// A `CopyOutResponse`: whether its rows come in binary (the overall
    /// format, its body's first byte).
    pub fn copy_out(&mut self, f: &Frame) {
        self.binary_copy = f.body().first() == Some(&1);
    }

    /// Whether the current result was cut (its `CommandComplete` withheld).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The column names of the current result, for the decision's context.
    pub fn column_names(&mut self) -> Vec<String> {
        self.columns()
            .map(|c| c.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Counts findings into the batch's report and the current result's.
    fn count(&mut self, batch: &mut BTreeMap<String, u64>, findings: &[airlock_dlp::Finding]) {
        for (k, n) in airlock_dlp::counts(findings) {
            *self.dlp.entry(k.clone()).or_insert(0) += n;
            *batch.entry(k).or_insert(0) += n;
        }
    }

    fn stop(&mut self, code: &str, message: &str) -> RowOut {
        self.stopped = true;
        RowOut::Stop(build::error(code, message))
    }

    /// One `DataRow`: counted, scanned, masked or stopped.
    pub fn row(&mut self, f: Frame, dlp: &mut BTreeMap<String, u64>) -> RowOut {
        if self.stopped {
            return RowOut::Drop;
        }
        if self.rows == 0 {
            // A portal that was suspended goes on counting.
            if let Some((portal, _, _)) = self.plan.executes.get(self.execute_at) {
                self.rows = self.suspended.get(portal).copied().unwrap_or(0);
            }
            if self.rows == u64::MAX {
                self.stopped = true;
                return RowOut::Drop;
            }
        }
        self.rows += 1;
        let rules = self.rules.clone();
        if rules.max_rows.is_some_and(|m| self.rows > m) {
            let m = rules.max_rows.unwrap_or(0);
            return self.stop(
                decide::BLOCKED,
                &format!("Airlock cut this result at {m} rows (max_rows)"),
            );
        }
        // A result decision counts findings whatever the mode: they are
        // what it is decided on.
        let scanning = rules.scanner.is_some() && (rules.mode != RowsDlp::Off || self.decided());
        if !scanning && rules.mask_columns.is_empty() {
            return RowOut::Send(f.raw);
        }
        let Ok(mut values) = codec::data_row(f.body()) else {
            return self.stop(decide::BLOCKED, "Airlock could not read a result row");
        };
        let columns = self.columns().map(<[Column]>::to_vec);
        if !rules.mask_columns.is_empty() && columns.is_none() {
            // Which column is which is unknown: masking by name cannot be
            // done, so nothing is released.
            return self.stop(
                decide::BLOCKED,
                "Airlock cannot tell this result's columns, so it cannot mask them; describe the statement first",
            );
        }
        // Binary values whose types are unknown cannot be read for numbers
        // (a `card::bigint` is eight bytes): where DLP must act, nothing is
        // released.
        if columns.is_none()
            && scanning
            && matches!(rules.mode, RowsDlp::Mask | RowsDlp::Block)
            && self.binary_asked()
        {
            return self.stop(
                decide::BLOCKED,
                "Airlock cannot tell this binary result's columns, so it cannot scan them; describe the statement first",
            );
        }
        let mut changed = false;
        for (i, v) in values.iter_mut().enumerate() {
            let col = columns.as_ref().and_then(|c| c.get(i));
            let Some(bytes) = v.as_ref() else { continue };
            let masked_by_name = col.filter(|c| {
                rules
                    .mask_columns
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(&c.name))
            });
            if let Some(c) = masked_by_name {
                // Text becomes `****` (its length hidden too); a binary
                // value cannot be rewritten as text, so it becomes NULL.
                *v = c.text.then(|| Bytes::from_static(b"****"));
                changed = true;
                continue;
            }
            // Every value is scanned, binary ones too (`email::bytea` in
            // binary format is the address's bytes); masking keeps the
            // length, so a binary value keeps its shape.
            if !scanning {
                continue;
            }
            let Some(scanner) = rules.scanner.as_deref() else {
                continue;
            };
            // A number sent in binary (`card::bigint`, in an array or a
            // record too) is scanned as the text a text-format client gets.
            // It cannot be masked in place: under `mask` it becomes NULL.
            if let Some(oid) = col.and_then(|c| c.numbers) {
                let Some(text) = binary::numbers(oid, bytes) else {
                    return self.stop(decide::BLOCKED, "Airlock could not read a result value");
                };
                // Most binary values are no number this reads: no scan.
                let findings = match text.is_empty() {
                    true => Vec::new(),
                    false => scanner.scan(text.as_bytes()),
                };
                if !findings.is_empty() {
                    if let Some(stop) = self.found(dlp, &findings, rules.mode) {
                        return stop;
                    }
                    if rules.mode == RowsDlp::Mask {
                        *v = None;
                        changed = true;
                        continue;
                    }
                }
            }
            let kind = col.map_or(TextKind::Plain, |c| c.text_kind);
            let hex = bytes
                .strip_prefix(b"\\x")
                .filter(|_| kind == TextKind::Bytea);
            let decoded = hex.and_then(|h| hex::decode(h).ok());
            let (masked, findings) = scan(
                scanner,
                decoded.as_deref().unwrap_or(bytes),
                rules.mode == RowsDlp::Mask,
            );
            if findings.is_empty() {
                continue;
            }
            if let Some(stop) = self.found(dlp, &findings, rules.mode) {
                return stop;
            }
            if rules.mode == RowsDlp::Mask {
                *v = Some(match (kind, &decoded) {
                    (TextKind::Bytea, Some(_)) => {
                        Bytes::from(format!("\\x{}", hex::encode(&masked)).into_bytes())
                    }
                    (TextKind::Number, _) => masked
                        .iter()
                        .map(|&b| if b == b'X' { b'9' } else { b })
                        .collect(),
                    _ => masked,
                });
                changed = true;
            }
        }
        if changed {
            RowOut::Send(build::data_row(&values))
        } else {
            RowOut::Send(f.raw)
        }
    }

    /// Whether the current `Execute`'s `Bind` asked for any binary column.
    fn binary_asked(&self) -> bool {
        self.plan
            .executes
            .get(self.execute_at)
            .is_some_and(|(_, _, formats)| formats.iter().any(|f| *f != 0))
    }

    /// A value of this row holds `findings`: counted, and under `block`
    /// the rest of the result withheld (the answer to send instead).
    fn found(
        &mut self,
        dlp: &mut BTreeMap<String, u64>,
        findings: &[airlock_dlp::Finding],
        mode: RowsDlp,
    ) -> Option<RowOut> {
        self.count(dlp, findings);
        (mode == RowsDlp::Block).then(|| {
            self.stop(
                decide::BLOCKED,
                "Airlock withheld the rest of this result: it holds personal data or secrets",
            )
        })
    }

    /// An error, notice or notification from the server: its text can
    /// carry a value (`invalid input syntax for type integer: "123-45-…"`).
    /// Masked under `mask`, replaced under `block`, counted otherwise.
    pub fn scrub_message(&mut self, f: Frame, dlp: &mut BTreeMap<String, u64>) -> Bytes {
        let rules = self.rules.clone();
        let Some(scanner) = rules.active_scanner() else {
            return f.raw;
        };
        let body = f.body();
        let (masked, findings) = scan(scanner, &body, rules.mode == RowsDlp::Mask);
        if findings.is_empty() {
            return f.raw;
        }
        self.count(dlp, &findings);
        match rules.mode {
            RowsDlp::Block if f.tag == b'E' => build::error(
                decide::BLOCKED,
                "Airlock withheld the server's error message: it holds personal data or secrets",
            ),
            RowsDlp::Block => Bytes::new(),
            RowsDlp::Mask => build::message(f.tag, &masked),
            _ => f.raw,
        }
    }

    /// The server's error message as an audit record keeps it: masked in
    /// every mode (`report` included), since the record is signed and
    /// kept for good (`invalid input syntax … "219-09-9999"` was stored
    /// whole, found by a black-box pass).
    pub fn for_the_record(&self, message: &str) -> String {
        match self.rules.scanner.as_deref() {
            Some(scanner) => {
                let (masked, _) = scan(scanner, message.as_bytes(), true);
                String::from_utf8_lossy(&masked).into_owned()
            }
            None => message.to_owned(),
        }
    }

    /// COPY OUT data: scanned as text.
    pub fn copy_data(&mut self, f: Frame, dlp: &mut BTreeMap<String, u64>) -> RowOut {
        if self.stopped {
            return RowOut::Drop;
        }
        let rules = self.rules.clone();
        let Some(scanner) = rules.active_scanner() else {
            return RowOut::Send(f.raw);
        };
        // Binary COPY rows carry no types: a card sent as a bigint is
        // eight bytes no scanner reads. Withheld where DLP must act.
        if self.binary_copy && matches!(rules.mode, RowsDlp::Mask | RowsDlp::Block) {
            return self.stop(
                decide::BLOCKED,
                "Airlock withheld this binary COPY: DLP cannot read binary rows; copy in text or CSV",
            );
        }
        let (masked, findings) = scan(scanner, &f.body(), rules.mode == RowsDlp::Mask);
        if findings.is_empty() {
            return RowOut::Send(f.raw);
        }
        self.count(dlp, &findings);
        match rules.mode {
            RowsDlp::Block => self.stop(
                decide::BLOCKED,
                "Airlock withheld the rest of this COPY: it holds personal data or secrets",
            ),
            RowsDlp::Mask => RowOut::Send(build::message(b'd', &masked)),
            _ => RowOut::Send(f.raw),
        }
    }

    /// Adds a row that is going out to the held result (with
    /// `result_action`); too large → the result is stopped.
    pub fn hold(&mut self, frame: Bytes) -> Option<Bytes> {
        let rules = self.rules.clone();
        let held = self.held.get_or_insert_with(Held::default);
        held.bytes += frame.len() as u64;
        held.rows += 1;
        held.dlp = self.dlp.clone();
        held.sha.update(&frame);
        if held.preview.len() < rules.preview_rows {
            held.preview.push(preview_row(&frame, &rules));
        }
        held.frames.push(frame);
        if held.bytes > rules.max_result_bytes {
            self.held = None;
            self.stopped = true;
            return Some(build::error(
                decide::BLOCKED,
                "this result is larger than max_result_bytes, so Airlock cannot decide on it whole; refused",
            ));
        }
        None
    }

    /// The checks on the held result: the plan's result checks with the
    /// result bound in params and described in context.
    pub fn result_checks(&mut self, held: &Held) -> Vec<CheckBody> {
        let sha = hex::encode(held.sha.clone().finalize());
        let columns = self.column_names();
        self.plan
            .result_checks
            .iter()
            .cloned()
            .map(|mut c| {
                c.params.insert("result_sha256".into(), json!(sha));
                c.context.insert("rows".into(), json!(held.rows));
                c.context.insert("dlp".into(), json!(held.dlp));
                c.context.insert("columns".into(), json!(columns));
                if !held.preview.is_empty() {
                    c.context.insert("preview".into(), json!(held.preview));
                }
                c
            })
            .collect()
    }
}

/// A row for the approver's preview: every text value masked, whatever
/// the mode.
fn preview_row(frame: &Bytes, rules: &Rules) -> Vec<Value> {
    let Ok(values) = codec::data_row(frame.slice(5..)) else {
        return Vec::new();
    };
    values
        .iter()
        .map(|v| match v {
            None => Value::Null,
            Some(b) => {
                let masked = match rules.scanner.as_deref() {
                    Some(s) => scan(s, b, true).0,
                    None => b.clone(),
                };
                json!(String::from_utf8_lossy(&masked))
            }
        })
        .collect()
}

/// Scans one value; with `mask`, also the value with each finding masked.
fn scan(
    scanner: &airlock_dlp::Scanner,
    value: &[u8],
    mask: bool,
) -> (Bytes, Vec<airlock_dlp::Finding>) {
    if !mask {
        return (Bytes::new(), scanner.scan(value));
    }
    let mut out = Vec::with_capacity(value.len());
    let mut stream = scanner.mask_stream();
    let mut findings = stream.feed(value, &mut out);
    findings.extend(stream.finish(&mut out));
    (Bytes::from(out), findings)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An error message goes to the audit record masked, whatever the
    /// mode: a failed cast quotes the value it could not read.
    #[test]
    fn error_messages_are_recorded_masked_in_every_mode() {
        let scanner = Arc::new(airlock_dlp::Scanner::new(&airlock_dlp::Config::default()).unwrap());
        for mode in [RowsDlp::Report, RowsDlp::Mask, RowsDlp::Block] {
            let results = Results::new(Arc::new(Rules {
                mode,
                scanner: Some(scanner.clone()),
                mask_columns: Vec::new(),
                max_rows: None,
                max_result_bytes: 1 << 20,
                preview_rows: 0,
            }));
            let kept = results
                .for_the_record("invalid input syntax for type integer: \"4111 1111 1111 1111\"");
            assert!(!kept.contains("4111 1111 1111 1111"), "{mode:?}: {kept}");
            assert!(kept.starts_with("invalid input syntax"), "{kept}");
        }
    }
}
