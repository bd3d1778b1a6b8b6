//! CSV records with the physical line each starts on, and a bound on the damage of a stray
//! quote.
//!
//! Hand-written (RFC 4180, `,` separated, `"` quoted) rather than the `csv` crate's reader for
//! three properties the ingest contract needs: the line number is the file's physical line for
//! LF, CRLF and CR-only files alike; a quoted field that stays open for more than a bounded
//! number of lines or bytes is one bad row at its opening line, and reading resumes on the
//! next line, so one stray quote cannot swallow the rest of a file; text after a closing quote
//! (`"hello"world`) is a bad row, not silently joined.

use std::io::{self, BufRead};

/// Where a record came from and what was wrong with its structure, if anything.
#[derive(Debug, Default)]
pub(crate) struct CsvRecord {
    /// Physical line (1-based) the record starts on.
    pub line: u64,
    /// The unquoted field values.
    pub fields: csv::ByteRecord,
    /// The record's bytes as they are in the file, without its line terminator (at most
    /// [`Limits::max_record_bytes`] of them).
    pub raw: Vec<u8>,
    /// Why the record is malformed; `None` for a well-formed record.
    pub error: Option<String>,
}

/// Bounds on one record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A quoted field may cross at most this many line ends.
    pub max_field_lines: usize,
    /// A quoted field crossing a line end may hold at most this many bytes.
    pub max_field_bytes: usize,
    /// A record longer than this is a bad row; only this much of it is kept for the
    /// quarantine, and memory stays bounded on a file without line ends.
    pub max_record_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first byte of a field.
    FieldStart,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// A quote inside a quoted field: the field's end, or the first half of `""`.
    QuoteSeen,
    /// The record is already bad: skip to the end of its line.
    Junk,
}

/// What feeding a slice of bytes ended with.
enum Fed {
    /// The slice was used up with the record still open.
    More,
    /// The record ended (after `n` bytes of the slice).
    Record(usize),
    /// A quoted field stayed open too long (after `n` bytes): the record is rewound to its
    /// first line.
    Unclosed(usize, String),
}

/// Reads [`CsvRecord`]s from a byte stream.
pub(crate) struct CsvRecords<R> {
    input: R,
    /// Bytes to read again before `input` (the lines after a rewound record's first).
    replay: Vec<u8>,
    replay_pos: usize,
    scan: Scan,
}

/// The parsing state, apart from the input so that feeding can borrow both.
struct Scan {
    limits: Limits,
    /// Physical line number of the next byte.
    next_line: u64,
    /// Line ends seen so far (the last line, without one, is counted at the end).
    lines: u64,
    /// Empty lines skipped.
    blank_lines: u64,
    /// The last byte was a `\r`: a `\n` right after it ends the same line.
    after_cr: bool,
    state: State,
    field: Vec<u8>,
    /// Line ends crossed by the current quoted field.
    quoted_lines: usize,
}

impl<R: BufRead> CsvRecords<R> {
    pub(crate) fn new(input: R, limits: Limits) -> Self {
        Self {
            input,
            replay: Vec::new(),
            replay_pos: 0,
            scan: Scan {
                limits,
                next_line: 1,
                lines: 0,
                blank_lines: 0,
                after_cr: false,
                state: State::FieldStart,
                field: Vec::new(),
                quoted_lines: 0,
            },
        }
    }

    /// Physical lines read so far, blank ones included.
    pub(crate) fn lines(&self) -> u64 {
        self.scan.lines
    }

    /// Empty lines skipped so far.
    pub(crate) fn blank_lines(&self) -> u64 {
        self.scan.blank_lines
    }

    /// Reads the next non-empty record into `rec`; `false` at the end of the input.
    pub(crate) fn read(&mut self, rec: &mut CsvRecord) -> io::Result<bool> {
        loop {
            self.start(rec);
            if !self.read_one(rec)? {
                return Ok(false);
            }
            // An empty line is no record (as the `csv` crate, and every spreadsheet, has it).
            if rec.raw.is_empty() && rec.error.is_none() {
                self.scan.blank_lines += 1;
                continue;
            }
            return Ok(true);
        }
    }

    fn start(&mut self, rec: &mut CsvRecord) {
        rec.line = self.scan.next_line;
        rec.fields.clear();
        rec.raw.clear();
        rec.error = None;
        self.scan.state = State::FieldStart;
        self.scan.field.clear();
        self.scan.quoted_lines = 0;
    }

    fn read_one(&mut self, rec: &mut CsvRecord) -> io::Result<bool> {
        loop {
            let fed = if self.replay_pos < self.replay.len() {
                let slice = &self.replay[self.replay_pos..];
                let fed = self.scan.feed(slice, rec);
                self.replay_pos += fed.used(slice.len());
                fed
            } else {
                let buf = self.input.fill_buf()?;
                if buf.is_empty() {
                    return Ok(self.at_eof(rec));
                }
                let fed = self.scan.feed(buf, rec);
                let used = fed.used(buf.len());
                self.input.consume(used);
                fed
            };
            match fed {
                Fed::More => {}
                Fed::Record(_) => return Ok(true),
                Fed::Unclosed(_, why) => {
                    self.rewind(rec, why);
                    return Ok(true);
                }
            }
        }
    }

    fn at_eof(&mut self, rec: &mut CsvRecord) -> bool {
        let s = &mut self.scan;
        // Every byte of a record is in `raw` (or it is full): nothing there, no record.
        if rec.raw.is_empty() {
            return false;
        }
        match s.state {
            State::Quoted => {
                let why = format!(
                    "a quoted field opened on line {} is not closed by the end of the file",
                    rec.line
                );
                self.rewind(rec, why);
                return true;
            }
            State::Junk => {}
            _ => rec.fields.push_field(&s.field),
        }
        // The last line has no terminator: count it here.
        s.lines += 1;
        s.next_line += 1;
        true
    }

    /// The record's quoted field never closed: the record is its first physical line, bad,
    /// and the lines after it are read again as records of their own.
    fn rewind(&mut self, rec: &mut CsvRecord, why: String) {
        let raw = &rec.raw;
        let first_end = raw
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(raw.len());
        let skip = match (raw.get(first_end), raw.get(first_end + 1)) {
            (Some(b'\r'), Some(b'\n')) => 2,
            (Some(_), _) => 1,
            (None, _) => 0,
        };
        let rest_empty = raw.len() <= first_end + skip;
        let mut replay = rec.raw.split_off(first_end);
        replay.drain(..skip);
        replay.extend_from_slice(&self.replay[self.replay_pos..]);
        self.replay = replay;
        self.replay_pos = 0;
        let s = &mut self.scan;
        // Lines counted while the field was open are counted again when they are re-read;
        // the record's own first line stays counted.
        s.lines = (s.lines + 1).saturating_sub(s.next_line - rec.line);
        s.next_line = rec.line + 1;
        // A `\r` ending the first line with its `\n` still unread keeps waiting for it.
        s.after_cr &= rest_empty;
        s.state = State::Junk;
        rec.fields.clear();
        rec.error = Some(why);
    }
}

impl Fed {
    /// Bytes of a slice of `len` consumed.
    fn used(&self, len: usize) -> usize {
        match self {
            Fed::More => len,
            Fed::Record(n) | Fed::Unclosed(n, _) => *n,
        }
    }
}

impl Scan {
    fn feed(&mut self, buf: &[u8], rec: &mut CsvRecord) -> Fed {
        let cap = self.limits.max_record_bytes;
        let special = |c: u8| matches!(c, b',' | b'"' | b'\n' | b'\r');
        // Bytes before this index were copied in bulk already.
        let mut skip_to = 0;
        for (i, &b) in buf.iter().enumerate() {
            if i < skip_to {
                continue;
            }
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                // The `\n` of a `\r\n` whose `\r` already ended the line.
                if self.state == State::Quoted {
                    if !push_capped(&mut rec.raw, b, cap) {
                        return self.unclosed_cap(i, rec);
                    }
                    self.field.push(b);
                }
                continue;
            }
            // The common case: a run of ordinary bytes inside a field, copied at once.
            if !special(b)
                && matches!(
                    self.state,
                    State::Unquoted | State::Quoted | State::FieldStart
                )
            {
                let run = buf[i..]
                    .iter()
                    .position(|&c| special(c))
                    .unwrap_or(buf.len() - i);
                if rec.raw.len() + run <= cap {
                    rec.raw.extend_from_slice(&buf[i..i + run]);
                    self.field.extend_from_slice(&buf[i..i + run]);
                    if self.state == State::FieldStart {
                        self.state = State::Unquoted;
                    }
                    skip_to = i + run;
                    continue;
                }
            }
            let line_end = b == b'\n' || b == b'\r';
            match self.state {
                State::Quoted => {
                    if !push_capped(&mut rec.raw, b, cap) {
                        if self.quoted_lines > 0 {
                            return self.unclosed_cap(i, rec);
                        }
                        self.too_long(rec);
                        continue;
                    }
                    if line_end {
                        self.end_line(b);
                        self.field.push(b);
                        self.quoted_lines += 1;
                        if self.quoted_lines > self.limits.max_field_lines {
                            return Fed::Unclosed(
                                i + 1,
                                format!(
                                    "a quoted field opened on line {} is still open after {} line ends (ingest.max_field_lines)",
                                    rec.line, self.limits.max_field_lines
                                ),
                            );
                        }
                        if self.field.len() > self.limits.max_field_bytes {
                            return Fed::Unclosed(
                                i + 1,
                                format!(
                                    "a quoted field opened on line {} runs over more than one line and past {} bytes (ingest.max_field_bytes)",
                                    rec.line, self.limits.max_field_bytes
                                ),
                            );
                        }
                    } else if b == b'"' {
                        self.state = State::QuoteSeen;
                    } else {
                        self.field.push(b);
                    }
                }
                _ if line_end => {
                    self.end_line(b);
                    if self.state != State::Junk {
                        rec.fields.push_field(&self.field);
                    }
                    return Fed::Record(i + 1);
                }
                // Kept for the quarantine (as far as the record's bound allows).
                State::Junk => {
                    push_capped(&mut rec.raw, b, cap);
                }
                state => {
                    if !push_capped(&mut rec.raw, b, cap) {
                        self.too_long(rec);
                        continue;
                    }
                    match (state, b) {
                        (_, b',') => {
                            rec.fields.push_field(&self.field);
                            self.field.clear();
                            self.state = State::FieldStart;
                        }
                        (State::FieldStart, b'"') => {
                            self.state = State::Quoted;
                            self.quoted_lines = 0;
                        }
                        (State::QuoteSeen, b'"') => {
                            self.field.push(b'"');
                            self.state = State::Quoted;
                        }
                        (State::QuoteSeen, _) => {
                            rec.error = Some(format!(
                                "text after the closing quote of field {} (a quote inside a quoted field is written \"\")",
                                rec.fields.len() + 1
                            ));
                            rec.fields.clear();
                            self.state = State::Junk;
                        }
                        // A quote inside an unquoted field is kept as text (`5" screen`).
                        _ => {
                            self.field.push(b);
                            self.state = State::Unquoted;
                        }
                    }
                }
            }
        }
        Fed::More
    }

    fn end_line(&mut self, b: u8) {
        self.next_line += 1;
        self.lines += 1;
        self.after_cr = b == b'\r';
    }

    /// A quoted field over several lines filled the record's buffer: rewind before byte `i`.
    fn unclosed_cap(&self, i: usize, rec: &CsvRecord) -> Fed {
        Fed::Unclosed(
            i,
            format!(
                "a quoted field opened on line {} runs over more than one line and past {} bytes (ingest.max_field_bytes)",
                rec.line, self.limits.max_field_bytes
            ),
        )
    }

    fn too_long(&mut self, rec: &mut CsvRecord) {
        if rec.error.is_none() {
            rec.error = Some(format!(
                "record longer than {} bytes; the quarantine keeps its start",
                self.limits.max_record_bytes
            ));
        }
        rec.fields.clear();
        self.field.clear();
        self.state = State::Junk;
    }
}

/// Appends `b` unless `raw` is full; `false` when it was.
fn push_capped(raw: &mut Vec<u8>, b: u8, cap: usize) -> bool {
    if raw.len() >= cap {
        return false;
    }
    raw.push(b);
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_field_lines: 3,
        max_field_bytes: 1000,
        max_record_bytes: 10_000,
    };

    /// One record as (line, fields or error, raw).
    type Seen = (u64, Result<Vec<String>, String>, String);

    /// Every record, and the line count.
    fn records(input: &[u8], limits: Limits) -> (Vec<Seen>, u64) {
        // A tiny buffer so that every state crosses a buffer boundary somewhere.
        let mut r = CsvRecords::new(io::BufReader::with_capacity(3, input), limits);
        let mut rec = CsvRecord::default();
        let mut out = Vec::new();
        while r.read(&mut rec).unwrap() {
            let fields = match &rec.error {
                Some(e) => Err(e.clone()),
                None => Ok(rec
                    .fields
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect()),
            };
            out.push((
                rec.line,
                fields,
                String::from_utf8_lossy(&rec.raw).into_owned(),
            ));
        }
        (out, r.lines())
    }

    fn lines_of(input: &[u8]) -> Vec<u64> {
        records(input, LIMITS).0.iter().map(|r| r.0).collect()
    }

    #[test]
    fn csv_line_numbers_are_physical_lines_for_lf_crlf_and_cr_files() {
        for eol in ["\n", "\r\n", "\r"] {
            let text = ["h1,h2", "a,b", "", "c,\"two", "lines\"", "d,e", ""].join(eol);
            assert_eq!(lines_of(text.as_bytes()), vec![1, 2, 4, 6], "{eol:?}");
            let (recs, lines) = records(text.as_bytes(), LIMITS);
            assert_eq!(lines, 6, "{eol:?}");
            assert_eq!(
                recs[2].1.as_ref().unwrap(),
                &vec!["c".to_string(), format!("two{eol}lines")]
            );
        }
        // No terminator after the last line.
        assert_eq!(lines_of(b"h\r\na\r\nb"), vec![1, 2, 3]);
        assert_eq!(records(b"h\r\na\r\nb", LIMITS).1, 3);
        // Mixed ends in one file.
        assert_eq!(lines_of(b"h\na\r\nb\rc\n"), vec![1, 2, 3, 4]);
    }

    #[test]
    fn quoted_fields_unescape_doubled_quotes_and_keep_commas() {
        let (recs, _) = records(b"\"a,b\",\"say \"\"hi\"\"\",\n", LIMITS);
        assert_eq!(
            recs[0].1.as_ref().unwrap(),
            &vec!["a,b".to_string(), "say \"hi\"".into(), String::new()]
        );
        assert_eq!(recs[0].2, "\"a,b\",\"say \"\"hi\"\"\",");
        // A bare quote inside an unquoted field is text.
        let (recs, _) = records(b"5\" screen,x\n", LIMITS);
        assert_eq!(recs[0].1.as_ref().unwrap()[0], "5\" screen");
    }

    #[test]
    fn text_after_a_closing_quote_is_a_bad_row_not_joined() {
        let (recs, _) = records(b"h\n\"hello\"world,x\nok\n", LIMITS);
        assert_eq!(recs.len(), 3);
        let err = recs[1].1.as_ref().unwrap_err();
        assert!(err.contains("after the closing quote of field 1"), "{err}");
        assert_eq!(recs[1].0, 2);
        assert_eq!(recs[1].2, "\"hello\"world,x");
        assert_eq!(recs[2].0, 3);
    }

    #[test]
    fn a_stray_quote_is_one_bad_row_and_reading_resumes_on_the_next_line() {
        let mut text = String::from("h1,h2\n\"stray,x\n");
        for i in 0..10 {
            text.push_str(&format!("a{i},b{i}\n"));
        }
        let (recs, lines) = records(text.as_bytes(), LIMITS);
        assert_eq!(lines, 12);
        assert_eq!(recs.len(), 12, "{recs:?}");
        assert_eq!(recs[1].0, 2);
        let err = recs[1].1.as_ref().unwrap_err();
        assert!(err.contains("opened on line 2"), "{err}");
        assert_eq!(recs[1].2, "\"stray,x");
        for (i, r) in recs[2..].iter().enumerate() {
            assert_eq!(r.0, i as u64 + 3);
            assert_eq!(
                r.1.as_ref().unwrap(),
                &vec![format!("a{i}"), format!("b{i}")]
            );
        }
        // Unclosed at the end of the file, within the line bound; CRLF and CR alike.
        for eol in ["\n", "\r\n", "\r"] {
            let text = ["h", "\"open", "x", "y"].join(eol);
            let (recs, lines) = records(text.as_bytes(), LIMITS);
            assert_eq!(lines, 4, "{eol:?}");
            let got: Vec<u64> = recs.iter().map(|r| r.0).collect();
            assert_eq!(got, vec![1, 2, 3, 4], "{eol:?}");
            assert!(recs[1].1.as_ref().unwrap_err().contains("end of the file"));
            assert_eq!(recs[3].1.as_ref().unwrap(), &vec!["y".to_string()]);
        }
        // The byte bound: a field over one line and past the byte limit.
        let limits = Limits {
            max_field_bytes: 10,
            ..LIMITS
        };
        let text = "\"0123456789ab\nx\"\nz\n";
        let (recs, _) = records(text.as_bytes(), limits);
        assert!(recs[0].1.as_ref().unwrap_err().contains("past 10 bytes"));
        assert_eq!(recs[1].2, "x\"");
        assert_eq!(recs[2].1.as_ref().unwrap(), &vec!["z".to_string()]);
    }

    #[test]
    fn a_record_longer_than_the_bound_is_bad_and_memory_stays_bounded() {
        let limits = Limits {
            max_record_bytes: 8,
            ..LIMITS
        };
        let (recs, lines) = records(b"a,b\n0123456789abcdef,x\nc,d\n", limits);
        assert_eq!(lines, 3);
        assert_eq!(recs[1].2, "01234567");
        assert!(
            recs[1]
                .1
                .as_ref()
                .unwrap_err()
                .contains("longer than 8 bytes")
        );
        assert_eq!(
            recs[2].1.as_ref().unwrap(),
            &vec!["c".to_string(), "d".into()]
        );
    }
}
