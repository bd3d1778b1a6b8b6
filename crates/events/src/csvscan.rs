//! CSV records with the physical line each starts on, and a bound on the damage of a stray
//! quote.
//!
//! Hand-written (RFC 4180, `,` separated, `"` quoted) rather than the `csv` crate's reader for
//! three properties the ingest contract needs: the line number is the file's physical line for
//! LF, CRLF and CR-only files alike; a quoted field that stays open for more than a bounded
//! number of lines or bytes is one bad row at its opening line, and reading resumes on the
//! next line, so one stray quote cannot swallow the rest of a file; text after a closing quote
//! (`"hello"world`) is a bad row, not silently joined.
//!
//! Each byte of a record without quotes is copied once (into the field data, from which the
//! raw text is rebuilt only for a bad row); a record with a quoted field also keeps its raw
//! bytes as they came.

use std::borrow::Cow;
use std::io::{self, BufRead};
use std::ops::Range;

/// One record: where it came from, its fields, and what was wrong with its structure.
#[derive(Debug, Default)]
pub(crate) struct CsvRecord {
    /// Physical line (1-based) the record starts on.
    pub line: u64,
    /// The unquoted field values, end to end.
    data: Vec<u8>,
    /// Where each complete field ends in `data`.
    ends: Vec<usize>,
    /// The bytes as they are in the file, kept once the record has a quoted field (before
    /// that they equal the fields joined by commas).
    raw: Vec<u8>,
    has_raw: bool,
    /// Bytes of the record read so far, without its line terminator.
    size: usize,
    /// Why the record is malformed; `None` for a well-formed record.
    pub error: Option<String>,
}

impl CsvRecord {
    /// A well-formed record of these fields (for tests of the code that reads records).
    #[cfg(test)]
    pub(crate) fn from_fields(line: u64, fields: &[&[u8]]) -> Self {
        let mut r = Self {
            line,
            ..Self::default()
        };
        for f in fields {
            r.data.extend_from_slice(f);
            r.ends.push(r.data.len());
        }
        r.size = r.raw().len();
        r
    }

    /// Number of fields.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Byte range of field `i` within [`as_slice`](Self::as_slice).
    pub(crate) fn range(&self, i: usize) -> Option<Range<usize>> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(start..end)
    }

    /// Field `i`.
    pub(crate) fn get(&self, i: usize) -> Option<&[u8]> {
        self.range(i).map(|r| &self.data[r])
    }

    /// Every field's bytes, end to end.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// The fields.
    #[cfg(test)]
    pub(crate) fn fields(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The record's text as it is in the file, without its line terminator (at most
    /// [`Limits::max_record_bytes`] of it).
    pub(crate) fn raw(&self) -> Cow<'_, [u8]> {
        if self.has_raw {
            return Cow::Borrowed(&self.raw);
        }
        // A record without quotes: its fields joined by commas are its text.
        let mut out = Vec::with_capacity(self.data.len() + self.ends.len());
        for (i, f) in (0..self.len()).filter_map(|i| self.get(i)).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(f);
        }
        Cow::Owned(out)
    }

    /// While reading a record without quotes: the fields so far, each followed by its comma,
    /// then the field being read, which is its text so far.
    fn joined(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + self.ends.len());
        let mut start = 0;
        for &end in &self.ends {
            out.extend_from_slice(&self.data[start..end]);
            out.push(b',');
            start = end;
        }
        out.extend_from_slice(&self.data[start..]);
        out
    }

    fn clear(&mut self, line: u64) {
        self.line = line;
        self.data.clear();
        self.ends.clear();
        self.raw.clear();
        self.has_raw = false;
        self.size = 0;
        self.error = None;
    }

    /// From here on keep the raw bytes too (the record's first quote).
    fn keep_raw(&mut self) {
        if !self.has_raw {
            self.raw = self.joined();
            self.has_raw = true;
        }
    }

    /// Start of the field being read, in `data`.
    fn field_start(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    fn end_field(&mut self) {
        self.ends.push(self.data.len());
    }

    /// Drop the fields of a malformed record (its raw text stays).
    fn drop_fields(&mut self) {
        self.keep_raw();
        self.data.clear();
        self.ends.clear();
    }
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

impl Fed {
    /// Bytes of a slice of `len` consumed.
    fn used(&self, len: usize) -> usize {
        match self {
            Fed::More => len,
            Fed::Record(n) | Fed::Unclosed(n, _) => *n,
        }
    }
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
            rec.clear(self.scan.next_line);
            self.scan.state = State::FieldStart;
            self.scan.quoted_lines = 0;
            if !self.read_one(rec)? {
                return Ok(false);
            }
            // An empty line is no record (as the `csv` crate, and every spreadsheet, has it).
            if rec.size == 0 && rec.error.is_none() {
                self.scan.blank_lines += 1;
                continue;
            }
            return Ok(true);
        }
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
        // Nothing read since the last record: no record.
        if rec.size == 0 {
            return false;
        }
        match self.scan.state {
            State::Quoted => {
                let why = format!(
                    "a quoted field opened on line {} is not closed by the end of the file",
                    rec.line
                );
                self.rewind(rec, why);
                return true;
            }
            State::Junk => {}
            _ => rec.end_field(),
        }
        // The last line has no terminator: count it here.
        self.scan.lines += 1;
        self.scan.next_line += 1;
        true
    }

    /// The record's quoted field never closed: the record is its first physical line, bad,
    /// and the lines after it are read again as records of their own.
    fn rewind(&mut self, rec: &mut CsvRecord, why: String) {
        // A record in a quoted field keeps its raw bytes.
        rec.keep_raw();
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
        rec.data.clear();
        rec.ends.clear();
        rec.size = rec.raw.len();
        rec.error = Some(why);
    }
}

/// Bytes that end or change a field; every other byte is copied in bulk.
fn special(c: u8) -> bool {
    matches!(c, b',' | b'"' | b'\n' | b'\r')
}

impl Scan {
    fn feed(&mut self, buf: &[u8], rec: &mut CsvRecord) -> Fed {
        let cap = self.limits.max_record_bytes;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                // The `\n` of a `\r\n` whose `\r` already ended the line.
                if self.state == State::Quoted {
                    if rec.size >= cap {
                        return self.unclosed_cap(i, rec);
                    }
                    rec.size += 1;
                    rec.raw.push(b);
                    rec.data.push(b);
                }
                i += 1;
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
                if rec.size + run <= cap {
                    let bytes = &buf[i..i + run];
                    rec.data.extend_from_slice(bytes);
                    if rec.has_raw {
                        rec.raw.extend_from_slice(bytes);
                    }
                    rec.size += run;
                    if self.state == State::FieldStart {
                        self.state = State::Unquoted;
                    }
                    i += run;
                    continue;
                }
            }
            let line_end = b == b'\n' || b == b'\r';
            match self.state {
                State::Quoted => {
                    if rec.size >= cap {
                        if self.quoted_lines > 0 {
                            return self.unclosed_cap(i, rec);
                        }
                        self.too_long(rec);
                        i += 1;
                        continue;
                    }
                    rec.size += 1;
                    rec.raw.push(b);
                    if line_end {
                        self.end_line(b);
                        rec.data.push(b);
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
                        if rec.data.len() - rec.field_start() > self.limits.max_field_bytes {
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
                        rec.data.push(b);
                    }
                }
                _ if line_end => {
                    self.end_line(b);
                    if self.state != State::Junk {
                        rec.end_field();
                    }
                    return Fed::Record(i + 1);
                }
                // Kept for the quarantine (as far as the record's bound allows).
                State::Junk => {
                    if rec.size < cap {
                        rec.size += 1;
                        rec.raw.push(b);
                    }
                }
                state => {
                    if rec.size >= cap {
                        self.too_long(rec);
                        i += 1;
                        continue;
                    }
                    if b == b'"' && state == State::FieldStart {
                        // The record's first quote: from here its raw bytes are kept too.
                        rec.keep_raw();
                    }
                    rec.size += 1;
                    if rec.has_raw {
                        rec.raw.push(b);
                    }
                    match (state, b) {
                        (_, b',') => {
                            rec.end_field();
                            self.state = State::FieldStart;
                        }
                        (State::FieldStart, b'"') => {
                            self.state = State::Quoted;
                            self.quoted_lines = 0;
                        }
                        (State::QuoteSeen, b'"') => {
                            rec.data.push(b'"');
                            self.state = State::Quoted;
                        }
                        (State::QuoteSeen, _) => {
                            rec.error = Some(format!(
                                "text after the closing quote of field {} (a quote inside a quoted field is written \"\")",
                                rec.len() + 1
                            ));
                            rec.drop_fields();
                            self.state = State::Junk;
                        }
                        // A quote inside an unquoted field is kept as text (`5" screen`).
                        _ => {
                            rec.data.push(b);
                            self.state = State::Unquoted;
                        }
                    }
                }
            }
            i += 1;
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
        rec.drop_fields();
        self.state = State::Junk;
    }
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
                    .fields()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect()),
            };
            out.push((
                rec.line,
                fields,
                String::from_utf8_lossy(&rec.raw()).into_owned(),
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
