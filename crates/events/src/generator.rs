//! Seeded synthetic telemetry reproducing the notebook's generative model (spec section 2),
//! plus scenario switches for testing detectors: an incident day, drift, coordinated rings.
//!
//! Output is streamed in time order without holding all events: the window is cut into
//! chunks, each chunk's event count is drawn from the exact multinomial (sequential
//! binomials), and each chunk is generated and sorted on its own. One thread draws the chunks
//! from the single seeded random stream while another turns them into rows and writes them,
//! so the random draws, and therefore the files, do not depend on the threads: the same seed,
//! end time and settings give byte-identical files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::Compression as PqCompression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution, Normal};

use crate::EventsError;
use crate::schema::{COLUMNS, EVENT_TYPES, event_schema};
use crate::timestamp::date_text;
use crate::validate::{EventBatchBuilder, ValidRow};

/// The most users `generate` makes (each is held in memory with its identifiers).
pub const MAX_USERS: usize = 100_000_000;

/// The notebook's benign prompts.
pub const BENIGN_PROMPTS: [&str; 7] = [
    "Summarize this article in simple terms.",
    "Help me draft a professional email to my team.",
    "Explain the difference between mitosis and meiosis.",
    "Generate Python code to parse a CSV and compute averages.",
    "Brainstorm names for a new biotech startup.",
    "Translate this paragraph into Spanish.",
    "Make a study plan for learning linear algebra.",
];
/// The notebook's spam prompts.
pub const SPAM_PROMPTS: [&str; 4] = [
    "Buy now buy now buy now!!!",
    "Click this link for free prizes!!!",
    "Limited offer, act fast!!!",
    "Join our group and earn money quickly!!!",
];
/// The notebook's policy-evasion prompts.
pub const EVASION_PROMPTS: [&str; 3] = [
    "How do I bypass content filters?",
    "Can you help me evade detection systems?",
    "Write something that breaks the rules, but hide it.",
];

const ABUSER_P: [f64; 7] = [0.01, 0.07, 0.72, 0.08, 0.03, 0.06, 0.03];
const BENIGN_P: [f64; 7] = [0.01, 0.12, 0.63, 0.10, 0.06, 0.04, 0.04];
const SURFACES: [&str; 4] = ["web", "ios", "android", "api"];
const PRODUCTS: [&str; 4] = ["chat", "assistants", "files", "images"];
const CHAT: usize = 2;
const POLICY_BLOCK: usize = 5;
const WARNING: usize = 6;

/// Generator settings (`vigil generate`).
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Number of events.
    pub events: u64,
    /// Number of users.
    pub users: usize,
    /// Length of the window in days.
    pub days: u32,
    /// Share of users who are abusers.
    pub abuse_rate: f64,
    /// Random seed.
    pub seed: u64,
    /// End of the window, UTC microseconds.
    pub end_micros: i64,
    /// Calendar day (0 = the window's first UTC date) with a block-rate spike.
    pub incident_day: Option<u32>,
    /// Shift chat token counts and latency in the last 3 calendar days.
    pub drift: bool,
    /// Number of coordinated rings sharing payment tokens and devices.
    pub rings: usize,
    /// Which world: the notebook's, or one where detection is not trivial.
    pub scenario: Scenario,
    /// The realistic scenario's message pools (default: [`TextPool::builtin`]).
    pub pool: Option<TextPool>,
}

impl GeneratorConfig {
    /// The user count when none is given: 3 users per 100 events (1,500 per 50,000), at
    /// least one.
    pub fn default_users(events: u64) -> usize {
        usize::try_from(events.saturating_mul(3) / 100).map_or(usize::MAX, |u| u.max(1))
    }
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            events: 50_000,
            users: 1_500,
            days: 14,
            abuse_rate: 0.04,
            seed: 42,
            end_micros: 0,
            incident_day: None,
            drift: false,
            rings: 0,
            scenario: Scenario::Notebook,
            pool: None,
        }
    }
}

/// Which synthetic world `generate` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scenario {
    /// The notebook's generative model, byte for byte (abusers on their own IP block: a
    /// detector separates them perfectly).
    #[default]
    Notebook,
    /// Abusers on ordinary IPs with behaviour that overlaps heavy benign users; noisy benign
    /// users (false-positive blocks); 2% label noise; rings linked only by shared devices
    /// and payments; and a few rare-harm users who behave like anyone else and show only in
    /// what they write. Messages come from [`TextPool`]s, with light variation.
    Realistic,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "notebook" => Ok(Self::Notebook),
            "realistic" => Ok(Self::Realistic),
            other => Err(format!(
                "unknown scenario `{other}` (expected notebook or realistic)"
            )),
        }
    }
}

/// Message pools by class, for the realistic scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct TextPool {
    /// Ordinary chat.
    pub benign: Vec<String>,
    /// Spam.
    pub spam: Vec<String>,
    /// Policy evasion.
    pub evasion: Vec<String>,
    /// The rare harmful class (account-takeover and payment-scam approaches by default).
    pub rare: Vec<String>,
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Words a realistic message may start with (light variation of the pool lines).
const OPENERS: &str = include_str!("../pools/openers.txt");
/// Words it may end with.
const CLOSERS: &str = include_str!("../pools/closers.txt");

impl TextPool {
    /// The pools that ship with Vigil: `crates/events/pools/benign.txt` and `rare.txt`, and
    /// the notebook's spam and evasion lines.
    pub fn builtin() -> Self {
        Self {
            benign: lines(include_str!("../pools/benign.txt")),
            spam: SPAM_PROMPTS.iter().map(|s| s.to_string()).collect(),
            evasion: EVASION_PROMPTS.iter().map(|s| s.to_string()).collect(),
            rare: lines(include_str!("../pools/rare.txt")),
        }
    }

    /// Index material for a Sentinel index of this pool, as `vigil demo` builds it: every
    /// other rare line as the harmful side (half of what rare-harm users write is then not in
    /// the index), every benign, spam and evasion line as the ordinary side (without spam,
    /// "earn money quickly" looks like a payment scam). Each line also comes with two copies
    /// carrying typing slips, as material drawn from real chat would, so that a slip alone
    /// does not look unusual to the scorer.
    pub fn index_material(&self) -> (Vec<String>, Vec<String>) {
        let with_slips = |lines: Vec<&String>| -> Vec<String> {
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            for (i, l) in lines.iter().enumerate() {
                for copy in 0..2u32 {
                    // Seeds 3k+1 and 3k+2: one and two slips.
                    let seed = (i as u32).wrapping_mul(3).wrapping_add(copy + 1);
                    out.push(with_typos(l, seed));
                }
            }
            out
        };
        let positives = with_slips(self.rare.iter().step_by(2).collect());
        let negatives = with_slips(
            self.benign
                .iter()
                .chain(&self.spam)
                .chain(&self.evasion)
                .collect(),
        );
        (positives, negatives)
    }

    /// Read JSONL lines `{"text": ..., "class": "benign" | "spam" | "evasion" | "rare"}`;
    /// a class the file leaves empty keeps the built-in lines.
    pub fn from_jsonl(path: &Path) -> Result<Self, EventsError> {
        let text = std::fs::read_to_string(path).map_err(|source| EventsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |line: usize, message: String| EventsError::BadInput {
            path: path.to_path_buf(),
            message: format!("line {line}: {message}"),
        };
        let mut pool = Self {
            benign: Vec::new(),
            spam: Vec::new(),
            evasion: Vec::new(),
            rare: Vec::new(),
        };
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| bad(i + 1, format!("invalid JSON: {e}")))?;
            let (Some(t), Some(class)) = (v["text"].as_str(), v["class"].as_str()) else {
                return Err(bad(i + 1, "needs \"text\" and \"class\" strings".into()));
            };
            let t = t.trim();
            if t.is_empty() || t.len() > 2000 {
                return Err(bad(i + 1, "a text must hold 1 to 2000 bytes".into()));
            }
            match class {
                "benign" => pool.benign.push(t.into()),
                "spam" => pool.spam.push(t.into()),
                "evasion" => pool.evasion.push(t.into()),
                "rare" => pool.rare.push(t.into()),
                other => {
                    return Err(bad(
                        i + 1,
                        format!("class `{other}` is not benign, spam, evasion or rare"),
                    ));
                }
            }
        }
        let builtin = Self::builtin();
        for (mine, theirs) in [
            (&mut pool.benign, builtin.benign),
            (&mut pool.spam, builtin.spam),
            (&mut pool.evasion, builtin.evasion),
            (&mut pool.rare, builtin.rare),
        ] {
            if mine.is_empty() {
                *mine = theirs;
            }
        }
        if [&pool.benign, &pool.spam, &pool.evasion, &pool.rare]
            .iter()
            .any(|l| l.len() > usize::from(u16::MAX))
        {
            return Err(EventsError::BadInput {
                path: path.to_path_buf(),
                message: format!("at most {} texts per class", u16::MAX),
            });
        }
        Ok(pool)
    }

    fn list(&self, class: u8) -> &[String] {
        match class {
            0 => &self.benign,
            1 => &self.spam,
            2 => &self.evasion,
            _ => &self.rare,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeneratorSummary {
    /// Events written.
    pub events: u64,
    /// Users.
    pub users: usize,
    /// Abusers among them.
    pub abusers: usize,
    /// Users in coordinated rings.
    pub ring_members: usize,
    /// The events file.
    pub out: PathBuf,
    /// The ground-truth file.
    pub ground_truth: PathBuf,
}

struct User {
    ip: String,
    device: String,
    payment: Option<String>,
    abuser: bool,
    actor: String,
    /// Realistic scenario: what the user is, the label the events carry (noisy) and how
    /// active the user is.
    kind: Kind,
    label: bool,
    weight: f64,
}

/// What a user is in the realistic scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Benign,
    /// Benign, but often blocked or warned by mistake.
    Noisy,
    Abuser,
    /// Behaves like a benign user; some messages belong to the rare harmful class.
    RareHarm,
}

fn cumulative(p: &[f64; 7]) -> [f64; 7] {
    let mut c = [0.0; 7];
    let mut acc = 0.0;
    for (i, v) in p.iter().enumerate() {
        acc += v;
        c[i] = acc;
    }
    c
}

fn pick(cum: &[f64; 7], u: f64) -> usize {
    cum.iter().position(|c| u < *c).unwrap_or(cum.len() - 1)
}

fn make_users(cfg: &GeneratorConfig, rng: &mut ChaCha8Rng) -> Vec<User> {
    let n = cfg.users;
    let mut users: Vec<User> = (0..n)
        .map(|_| {
            let ip = format!("203.0.113.{}", rng.random_range(1..=229));
            let device = format!("dev_{:06}", rng.random_range(1..(2 * n).max(2)));
            let payment = if rng.random::<f64>() < 0.65 {
                Some(format!("pay_{:06}", rng.random_range(1..(n / 2 + 50))))
            } else {
                None
            };
            User {
                ip,
                device,
                payment,
                abuser: false,
                actor: String::new(),
                kind: Kind::Benign,
                label: false,
                weight: 1.0,
            }
        })
        .collect();
    let n_abusers = ((n as f64) * cfg.abuse_rate).floor() as usize;
    let n_abusers = n_abusers.min(n);
    let abusers = rand::seq::index::sample(rng, n, n_abusers).into_vec();
    let clusters = (n / 500).max(3);
    // With rings, the first half of the abusers (in draw order) form the rings.
    let ring_members = if cfg.rings > 0 {
        (n_abusers / 2).max(cfg.rings.min(n_abusers))
    } else {
        0
    };
    if cfg.rings > ring_members {
        tracing::warn!(
            "--rings {} asked for, but the {n_abusers} abuser(s) among {n} users form only {} \
             ring(s) (raise --users or --abuse-rate)",
            cfg.rings,
            ring_members.min(cfg.rings)
        );
    }
    for (i, &u) in abusers.iter().enumerate() {
        let user = &mut users[u];
        user.abuser = true;
        if i < ring_members {
            let r = i % cfg.rings;
            let j = i / cfg.rings;
            user.actor = format!("ring_{r:03}");
            user.device = format!("dev_ring_{r:03}_{}", j % 2);
            user.payment = Some(format!("pay_ring_{r:03}"));
            user.ip = format!("192.0.2.{}", (r * 7 + j % 3) % 254 + 1);
        } else {
            let cluster = format!("actor_{:02}", i % clusters);
            user.ip = format!("198.51.100.{}", (i % 30) + 1);
            user.device = format!("dev_shared_{cluster}_{:02}", i % 10);
            user.actor = cluster;
        }
    }
    for u in &mut users {
        u.label = u.abuser;
        if u.abuser {
            u.kind = Kind::Abuser;
        }
    }
    users
}

/// Share of users who are rare-harm users in the realistic scenario (at least one).
const RARE_HARM_RATE: f64 = 0.005;
/// Share of benign users who are noisy.
const NOISY_RATE: f64 = 0.05;
/// Share of users whose events carry the wrong label.
const LABEL_NOISE: f64 = 0.02;

/// The realistic scenario's users: everyone on the same IP range and their own devices;
/// rings share devices and payment tokens only; activity varies (log-normal weights), so
/// heavy benign users look busy too.
fn make_users_realistic(cfg: &GeneratorConfig, rng: &mut ChaCha8Rng) -> Vec<User> {
    let n = cfg.users;
    let activity = rand_distr::LogNormal::new(0.0, 0.8).ok();
    let mut users: Vec<User> = (0..n)
        .map(|_| User {
            ip: format!("203.0.113.{}", rng.random_range(1..=229)),
            device: format!("dev_{:06}", rng.random_range(1..(2 * n).max(2))),
            payment: (rng.random::<f64>() < 0.65)
                .then(|| format!("pay_{:06}", rng.random_range(1..(n / 2 + 50)))),
            abuser: false,
            actor: String::new(),
            kind: Kind::Benign,
            label: false,
            weight: activity.map_or(1.0, |d| d.sample(rng)),
        })
        .collect();
    let n_abusers = (((n as f64) * cfg.abuse_rate).floor() as usize).min(n);
    let n_rare =
        (((n as f64) * RARE_HARM_RATE).round() as usize).clamp(1, n - n_abusers.min(n - 1));
    let picked = rand::seq::index::sample(rng, n, (n_abusers + n_rare).min(n)).into_vec();
    let (abusers, rare) = picked.split_at(n_abusers.min(picked.len()));
    let ring_members = if cfg.rings > 0 {
        (n_abusers / 2).max(cfg.rings.min(n_abusers))
    } else {
        0
    };
    for (i, &u) in abusers.iter().enumerate() {
        let user = &mut users[u];
        user.abuser = true;
        user.kind = Kind::Abuser;
        if i < ring_members {
            let r = i % cfg.rings;
            let j = i / cfg.rings;
            user.actor = format!("ring_{r:03}");
            user.device = format!("dev_ring_{r:03}_{}", j % 2);
            user.payment = Some(format!("pay_ring_{r:03}"));
        } else {
            user.actor = format!("abuser_{i:05}");
        }
    }
    for (i, &u) in rare.iter().enumerate() {
        let user = &mut users[u];
        user.abuser = true;
        user.kind = Kind::RareHarm;
        user.actor = format!("rare_harm_{i:04}");
    }
    for u in &mut users {
        if u.kind == Kind::Benign && rng.random::<f64>() < NOISY_RATE {
            u.kind = Kind::Noisy;
        }
        u.label = u.abuser != (rng.random::<f64>() < LABEL_NOISE);
    }
    users
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

enum Sink {
    Csv(BufWriter<File>),
    Parquet(Box<(ArrowWriter<File>, EventBatchBuilder)>),
}

/// The texts chats are made of: the notebook's three lists, or the realistic scenario's
/// pools with their openers and closers.
struct Texts {
    pool: TextPool,
    quoted: [Vec<String>; 4],
    openers: Vec<String>,
    closers: Vec<String>,
}

impl Texts {
    fn new(cfg: &GeneratorConfig) -> Self {
        let pool = match cfg.scenario {
            Scenario::Notebook => TextPool {
                benign: BENIGN_PROMPTS.iter().map(|s| s.to_string()).collect(),
                spam: SPAM_PROMPTS.iter().map(|s| s.to_string()).collect(),
                evasion: EVASION_PROMPTS.iter().map(|s| s.to_string()).collect(),
                rare: Vec::new(),
            },
            Scenario::Realistic => cfg.pool.clone().unwrap_or_else(TextPool::builtin),
        };
        let quoted = [0u8, 1, 2, 3].map(|c| pool.list(c).iter().map(|t| csv_quote(t)).collect());
        Self {
            pool,
            quoted,
            openers: lines(OPENERS),
            closers: lines(CLOSERS),
        }
    }

    /// The chat's text.
    fn text(&self, p: Prompt) -> std::borrow::Cow<'_, str> {
        let line = &self.pool.list(p.class)[usize::from(p.line)];
        if p.is_plain() {
            return std::borrow::Cow::Borrowed(line);
        }
        let mut t = String::with_capacity(line.len() + 24);
        if p.opener > 0 {
            t.push_str(&self.openers[usize::from(p.opener) - 1]);
            t.push(' ');
        }
        t.push_str(line);
        if p.closer > 0 {
            t.push(' ');
            t.push_str(&self.closers[usize::from(p.closer) - 1]);
        }
        if p.style & STYLE_LOWERCASE != 0 {
            t = t.to_lowercase();
        }
        if p.style & STYLE_NO_FINAL_MARK != 0 {
            while t.ends_with(['.', '?', '!']) {
                t.pop();
            }
        }
        if p.typos != 0 {
            t = with_typos(&t, p.typos);
        }
        std::borrow::Cow::Owned(t)
    }

    /// The chat's text as a CSV field.
    fn csv(&self, p: Prompt) -> std::borrow::Cow<'_, str> {
        if p.is_plain() {
            return std::borrow::Cow::Borrowed(
                &self.quoted[usize::from(p.class)][usize::from(p.line)],
            );
        }
        std::borrow::Cow::Owned(csv_quote(&self.text(p)))
    }
}

/// Which text a chat carries.
#[derive(Debug, Clone, Copy)]
struct Prompt {
    class: u8,
    line: u16,
    opener: u8,
    closer: u8,
    /// [`STYLE_LOWERCASE`] and [`STYLE_NO_FINAL_MARK`] bits.
    style: u8,
    /// Seed of the typing slips (0 = none; see [`with_typos`]).
    typos: u32,
}

/// The message typed in lower case.
const STYLE_LOWERCASE: u8 = 1;
/// The final `.`, `?` or `!` left off.
const STYLE_NO_FINAL_MARK: u8 = 2;

impl Prompt {
    fn plain(class: u8, line: usize) -> Self {
        Self {
            class,
            line: line as u16,
            opener: 0,
            closer: 0,
            style: 0,
            typos: 0,
        }
    }

    /// The pool's line as it is.
    fn is_plain(self) -> bool {
        self.opener == 0 && self.closer == 0 && self.style == 0 && self.typos == 0
    }
}

/// `text` with the typing slips `seed` stands for: one to three (`seed % 3 + 1`), each an
/// adjacent letter swap, a dropped letter or a doubled letter at a position drawn from the
/// seed. Only ASCII letters are touched, so the text stays valid UTF-8 and its words stay
/// readable. The same seed gives the same text.
fn with_typos(text: &str, seed: u32) -> String {
    let original: Vec<char> = text.chars().collect();
    let mut chars = original.clone();
    let mut state = u64::from(seed);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let slips = 1 + (seed % 3) as usize;
    for _ in 0..slips {
        let letters: Vec<usize> = (0..chars.len())
            .filter(|&i| chars[i].is_ascii_alphabetic())
            .collect();
        if letters.len() < 2 {
            break;
        }
        let at = letters[(next() % letters.len() as u64) as usize];
        match next() % 3 {
            0 if at + 1 < chars.len()
                && chars[at + 1].is_ascii_alphabetic()
                && chars[at + 1] != chars[at] =>
            {
                chars.swap(at, at + 1);
            }
            1 => {
                chars.remove(at);
            }
            _ => chars.insert(at, chars[at]),
        }
    }
    // Slips can undo each other; a slip is always visible.
    if chars == original
        && let Some(at) = chars.iter().position(char::is_ascii_alphabetic)
    {
        chars.insert(at, chars[at]);
    }
    chars.into_iter().collect()
}

/// One sampled event, before any text is made of it.
#[derive(Debug, Clone, Copy)]
struct Sampled {
    ts: i64,
    user: u32,
    event_type: u8,
    surface: u8,
    product: u8,
    /// For chats: the class (benign, spam, evasion, rare), the line's index in its list,
    /// and the opener and closer added around it (0 = none; always none in the notebook).
    prompt: Option<Prompt>,
    blocked: i8,
    warned: i8,
    tokens_in: i64,
    tokens_out: i64,
    latency_ms: i64,
}

/// Draws the events, chunk by chunk in time order, from the one seeded random stream.
struct Sampler<'a> {
    cfg: &'a GeneratorConfig,
    users: &'a [User],
    texts: &'a Texts,
    /// Realistic scenario: cumulative activity weights of the users.
    cum_weight: Vec<f64>,
    cum_abuser: [f64; 7],
    cum_benign: [f64; 7],
    /// Token and latency distributions: `[chat, other]`.
    tokens_in: [Normal<f64>; 2],
    tokens_out: [Normal<f64>; 2],
    latency: [Normal<f64>; 2],
}

impl Sampler<'_> {
    /// Send every chunk to `tx`; stops early when the receiver is gone (a write failed).
    fn run(&self, rng: &mut ChaCha8Rng, tx: &std::sync::mpsc::SyncSender<Vec<Sampled>>) {
        let cfg = self.cfg;
        let window = i64::from(cfg.days) * 86_400_000_000;
        let start = cfg.end_micros - window;
        let n_chunks = (cfg.events / 50_000).clamp(1, 100_000) as i64;
        let chunk_len = window / n_chunks;
        let mut remaining = cfg.events;
        let mut buf: Vec<(i64, u32)> = Vec::new();
        for c in 0..n_chunks {
            let c_start = start + c * chunk_len;
            let c_end = if c == n_chunks - 1 {
                cfg.end_micros
            } else {
                c_start + chunk_len
            };
            let share = (c_end - c_start) as f64 / (cfg.end_micros - c_start) as f64;
            let k = if c == n_chunks - 1 || remaining == 0 {
                remaining
            } else {
                Binomial::new(remaining, share.clamp(0.0, 1.0))
                    .map(|b| b.sample(rng))
                    .unwrap_or(0)
            };
            remaining -= k;
            buf.clear();
            for _ in 0..k {
                let ts = rng.random_range(c_start..c_end);
                let user = match self.cum_weight.last() {
                    Some(&total) => {
                        let x = rng.random::<f64>() * total;
                        self.cum_weight
                            .partition_point(|&c| c <= x)
                            .min(self.users.len() - 1) as u32
                    }
                    None => rng.random_range(0..self.users.len()) as u32,
                };
                buf.push((ts, user));
            }
            buf.sort_unstable();
            let chunk: Vec<Sampled> = buf
                .iter()
                .map(|&(ts, u)| match cfg.scenario {
                    Scenario::Notebook => self.event(rng, ts, u),
                    Scenario::Realistic => self.event_realistic(rng, ts, u),
                })
                .collect();
            if tx.send(chunk).is_err() {
                return;
            }
        }
    }

    /// The notebook's per-event draws, in its order.
    fn event(&self, rng: &mut ChaCha8Rng, ts: i64, uid: u32) -> Sampled {
        let u = &self.users[uid as usize];
        let (et, surface, product) = self.head(rng, u.abuser);
        let is_chat = et == CHAT;
        let (mut blocked, mut warned) = (0i8, 0i8);
        let mut prompt = None;
        if is_chat {
            if u.abuser && rng.random::<f64>() < 0.55 {
                if rng.random::<f64>() < 0.7 {
                    prompt = Some(Prompt::plain(1, rng.random_range(0..SPAM_PROMPTS.len())));
                    if rng.random::<f64>() < 0.25 {
                        warned = 1;
                    }
                } else {
                    prompt = Some(Prompt::plain(2, rng.random_range(0..EVASION_PROMPTS.len())));
                    if rng.random::<f64>() < 0.6 {
                        blocked = 1;
                    } else if rng.random::<f64>() < 0.5 {
                        warned = 1;
                    }
                }
            } else {
                prompt = Some(Prompt::plain(0, rng.random_range(0..BENIGN_PROMPTS.len())));
            }
        }
        self.finish(
            rng,
            ts,
            uid,
            (et, surface, product),
            prompt,
            (blocked, warned),
        )
    }

    /// The draws every scenario starts an event with, in the notebook's order: the event
    /// type (from the abuser or the benign mix), the surface and the product.
    fn head(&self, rng: &mut ChaCha8Rng, abusive: bool) -> (usize, u8, u8) {
        let mix = if abusive {
            &self.cum_abuser
        } else {
            &self.cum_benign
        };
        let et = pick(mix, rng.random());
        let surface = rng.random_range(0..SURFACES.len()) as u8;
        let product = rng.random_range(0..PRODUCTS.len()) as u8;
        (et, surface, product)
    }

    /// The draws every scenario ends an event with, in the notebook's order: the event
    /// type's own block or warning, the incident day's burst, tokens and latency (with
    /// drift in the last days).
    fn finish(
        &self,
        rng: &mut ChaCha8Rng,
        ts: i64,
        uid: u32,
        (et, surface, product): (usize, u8, u8),
        prompt: Option<Prompt>,
        (mut blocked, mut warned): (i8, i8),
    ) -> Sampled {
        let cfg = self.cfg;
        let first_day =
            (cfg.end_micros - i64::from(cfg.days) * 86_400_000_000).div_euclid(86_400_000_000);
        let drift_from_day = (cfg.end_micros - 1).div_euclid(86_400_000_000) - 2;
        let is_chat = et == CHAT;
        if et == POLICY_BLOCK {
            blocked = 1;
        }
        if et == WARNING {
            warned = 1;
        }
        let day = ts.div_euclid(86_400_000_000);
        if is_chat
            && cfg
                .incident_day
                .is_some_and(|k| day == first_day + i64::from(k))
        {
            // The incident: a burst of blocked chats across all users on one day.
            if rng.random::<f64>() < 0.12 {
                blocked = 1;
            }
        }
        let which = usize::from(!is_chat);
        let mut tin = self.tokens_in[which].sample(rng);
        let mut tout = self.tokens_out[which].sample(rng);
        let mut lat = self.latency[which].sample(rng);
        if cfg.drift && is_chat && day >= drift_from_day {
            tin *= 1.6;
            tout *= 1.5;
            lat += 350.0;
        }
        Sampled {
            ts,
            user: uid,
            event_type: et as u8,
            surface,
            product,
            prompt,
            blocked,
            warned,
            tokens_in: tin.max(1.0) as i64,
            tokens_out: tout.max(1.0) as i64,
            latency_ms: lat.max(5.0) as i64,
        }
    }
}

impl Sampler<'_> {
    /// A chat text of `class` with the variation of real chat: an opener and a closer (each 30%
    /// of the time), lower case (30%), no final mark (30%) and typing slips (70% of the
    /// messages), the same for every class so that no variation gives a class away.
    fn varied(&self, rng: &mut ChaCha8Rng, class: u8) -> Prompt {
        let n = self.texts.pool.list(class).len().max(1);
        let line = rng.random_range(0..n) as u16;
        let opener = if rng.random::<f64>() < 0.3 {
            rng.random_range(1..=self.texts.openers.len().max(1)) as u8
        } else {
            0
        };
        let closer = if rng.random::<f64>() < 0.3 {
            rng.random_range(1..=self.texts.closers.len().max(1)) as u8
        } else {
            0
        };
        let mut style = 0;
        if rng.random::<f64>() < 0.3 {
            style |= STYLE_LOWERCASE;
        }
        if rng.random::<f64>() < 0.3 {
            style |= STYLE_NO_FINAL_MARK;
        }
        let typos = if rng.random::<f64>() < 0.7 {
            rng.random::<u32>().max(1)
        } else {
            0
        };
        Prompt {
            class,
            line,
            opener: opener.min(self.texts.openers.len() as u8),
            closer: closer.min(self.texts.closers.len() as u8),
            style,
            typos,
        }
    }

    /// The realistic scenario's draws: abusers half the time act like benign users, noisy
    /// users get blocked by mistake, rare-harm users behave like benign users and write some
    /// messages of the rare class (which filters do not catch).
    fn event_realistic(&self, rng: &mut ChaCha8Rng, ts: i64, uid: u32) -> Sampled {
        let u = &self.users[uid as usize];
        let acts_abusive = u.kind == Kind::Abuser && rng.random::<f64>() < 0.5;
        let (et, surface, product) = self.head(rng, acts_abusive);
        let is_chat = et == CHAT;
        let (mut blocked, mut warned) = (0i8, 0i8);
        let mut prompt = None;
        if is_chat {
            match u.kind {
                Kind::Abuser if rng.random::<f64>() < 0.35 => {
                    if rng.random::<f64>() < 0.7 {
                        prompt = Some(self.varied(rng, 1));
                        if rng.random::<f64>() < 0.25 {
                            warned = 1;
                        }
                    } else {
                        prompt = Some(self.varied(rng, 2));
                        if rng.random::<f64>() < 0.6 {
                            blocked = 1;
                        } else if rng.random::<f64>() < 0.5 {
                            warned = 1;
                        }
                    }
                }
                Kind::RareHarm if rng.random::<f64>() < 0.25 => {
                    prompt = Some(self.varied(rng, 3));
                }
                Kind::Noisy => {
                    prompt = Some(self.varied(rng, 0));
                    if rng.random::<f64>() < 0.12 {
                        blocked = 1;
                    } else if rng.random::<f64>() < 0.12 {
                        warned = 1;
                    }
                }
                _ => prompt = Some(self.varied(rng, 0)),
            }
        }
        self.finish(
            rng,
            ts,
            uid,
            (et, surface, product),
            prompt,
            (blocked, warned),
        )
    }
}

/// The formatted `YYYY-MM-DD` of the last day seen, so a chunk's rows (sorted by time)
/// compute their calendar date once per day.
#[derive(Default)]
struct Clock {
    day: Option<i64>,
    date: [u8; 10],
}

/// Append `v` as exactly `width` decimal digits (zero-padded; `v` fits).
fn push_digits(out: &mut Vec<u8>, v: i64, width: usize) {
    let mut d = [b'0'; 20];
    let mut v = v.unsigned_abs();
    for slot in d[..width].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&d[..width]);
}

/// One CSV row (the columns of [`COLUMNS`], newline-terminated) without `format!`.
fn csv_row(
    out: &mut Vec<u8>,
    index: u64,
    e: &Sampled,
    abuser: bool,
    clock: &mut Clock,
    user_fields: &[Vec<u8>],
    texts: &Texts,
) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"e_");
    push_digits(out, index as i64, 9);
    out.push(b',');
    let secs = e.ts.div_euclid(1_000_000);
    let day = secs.div_euclid(86_400);
    if clock.day != Some(day) {
        // The window lies within years 0-9999 (`generate` checks it before any row).
        clock.date = date_text(day).unwrap_or(*b"0000-00-00");
        clock.day = Some(day);
    }
    out.extend_from_slice(&clock.date);
    let sod = secs.rem_euclid(86_400);
    out.push(b'T');
    push_digits(out, sod / 3600, 2);
    out.push(b':');
    push_digits(out, (sod / 60) % 60, 2);
    out.push(b':');
    push_digits(out, sod % 60, 2);
    out.push(b'.');
    push_digits(out, e.ts.rem_euclid(1_000_000), 6);
    out.extend_from_slice(b"Z,");
    out.extend_from_slice(&user_fields[e.user as usize]);
    for text in [
        SURFACES[usize::from(e.surface)],
        PRODUCTS[usize::from(e.product)],
        EVENT_TYPES[usize::from(e.event_type)],
    ] {
        out.extend_from_slice(text.as_bytes());
        out.push(b',');
    }
    if let Some(p) = e.prompt {
        out.extend_from_slice(texts.csv(p).as_bytes());
    }
    out.push(b',');
    for v in [e.tokens_in, e.tokens_out, e.latency_ms] {
        out.extend_from_slice(num.format(v).as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(num.format(e.blocked).as_bytes());
    out.push(b',');
    out.extend_from_slice(num.format(e.warned).as_bytes());
    out.push(b',');
    out.push(b'0' + u8::from(abuser));
    out.push(b'\n');
}

/// Generate events to `out` (`.csv` or `.parquet`) and `ground_truth.csv` beside it.
/// `progress` is called with the number of events written so far.
pub fn generate(
    cfg: &GeneratorConfig,
    out: &Path,
    progress: &dyn Fn(u64),
) -> Result<GeneratorSummary, EventsError> {
    if cfg.users == 0 || cfg.days == 0 {
        return Err(EventsError::BadArgument(
            "--users and --days must be at least 1".into(),
        ));
    }
    if !(0.0..=1.0).contains(&cfg.abuse_rate) {
        return Err(EventsError::BadArgument(format!(
            "--abuse-rate must be in [0, 1], got {}",
            cfg.abuse_rate
        )));
    }
    if cfg.users > MAX_USERS {
        return Err(EventsError::BadArgument(format!(
            "{} users is more than the generator holds in memory (at most {MAX_USERS}; \
                 without --users it takes 3 per 100 events)",
            cfg.users
        )));
    }
    // Checked: `--days` is the user's, and a window past i64 microseconds must not wrap.
    let start = i64::from(cfg.days)
        .checked_mul(86_400_000_000)
        .and_then(|w| cfg.end_micros.checked_sub(w));
    let in_range = |micros: i64| date_text(micros.div_euclid(86_400_000_000)).is_some();
    if !start.is_some_and(in_range) || !in_range(cfg.end_micros.saturating_sub(1)) {
        return Err(EventsError::BadArgument(
            "the generated window (--end minus --days) must lie within years 0 to 9999".into(),
        ));
    }
    if let (Some(k), Some(start)) = (cfg.incident_day, start) {
        // Calendar dates the window touches: `days + 1` when it does not start at midnight.
        let dates =
            (cfg.end_micros - 1).div_euclid(86_400_000_000) - start.div_euclid(86_400_000_000) + 1;
        if i64::from(k) >= dates {
            return Err(EventsError::BadArgument(format!(
                "--incident-day {k} is outside the window: its {dates} calendar dates are \
                     days 0 to {}",
                dates - 1
            )));
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EventsError::Io { path, source }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let is_parquet = name.ends_with(".parquet");
    if !is_parquet && !name.ends_with(".csv") {
        return Err(EventsError::BadArgument(format!(
            "--out {}: the output must end in .csv or .parquet",
            out.display()
        )));
    }

    if cfg.pool.is_some() && cfg.scenario == Scenario::Notebook {
        return Err(EventsError::BadArgument(
            "--text-pool is for --scenario realistic (the notebook scenario keeps its own lines)"
                .into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let users = match cfg.scenario {
        Scenario::Notebook => make_users(cfg, &mut rng),
        Scenario::Realistic => make_users_realistic(cfg, &mut rng),
    };
    let texts = Texts::new(cfg);
    let gt_path = out.with_file_name("ground_truth.csv");
    {
        let mut gt = BufWriter::new(File::create(&gt_path).map_err(io(&gt_path))?);
        writeln!(gt, "user_id,is_abuser,actor_id").map_err(io(&gt_path))?;
        for (i, u) in users.iter().enumerate() {
            writeln!(gt, "u_{i:05},{},{}", u8::from(u.abuser), u.actor).map_err(io(&gt_path))?;
        }
        gt.flush().map_err(io(&gt_path))?;
    }

    let file = File::create(out).map_err(io(out))?;
    let mut sink = if is_parquet {
        let props = WriterProperties::builder()
            .set_compression(PqCompression::SNAPPY)
            .build();
        let w = ArrowWriter::try_new(file, event_schema(), Some(props)).map_err(|e| {
            EventsError::Io {
                path: out.to_path_buf(),
                source: std::io::Error::other(e),
            }
        })?;
        Sink::Parquet(Box::new((w, EventBatchBuilder::with_capacity(65_536))))
    } else {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        writeln!(w, "{}", COLUMNS.join(",")).map_err(io(out))?;
        Sink::Csv(w)
    };

    let user_ids: Vec<String> = (0..users.len()).map(|i| format!("u_{i:05}")).collect();
    // The columns a user fixes (user_id, ip, device_id, payment_id) as one CSV fragment.
    let user_fields: Vec<Vec<u8>> = users
        .iter()
        .zip(&user_ids)
        .map(|(u, id)| {
            format!(
                "{id},{},{},{},",
                u.ip,
                u.device,
                u.payment.as_deref().unwrap_or("")
            )
            .into_bytes()
        })
        .collect();
    let normal = |m: f64, s: f64| {
        Normal::new(m, s).map_err(|e| EventsError::BadInput {
            path: out.to_path_buf(),
            message: e.to_string(),
        })
    };
    let sampler = Sampler {
        cfg,
        users: &users,
        texts: &texts,
        cum_weight: match cfg.scenario {
            Scenario::Notebook => Vec::new(),
            Scenario::Realistic => users
                .iter()
                .scan(0.0, |acc, u| {
                    *acc += u.weight;
                    Some(*acc)
                })
                .collect(),
        },
        cum_abuser: cumulative(&ABUSER_P),
        cum_benign: cumulative(&BENIGN_P),
        tokens_in: [normal(220.0, 80.0)?, normal(30.0, 80.0)?],
        tokens_out: [normal(260.0, 120.0)?, normal(20.0, 120.0)?],
        latency: [normal(900.0, 300.0)?, normal(180.0, 90.0)?],
    };

    // Sampling (one random stream, in order) runs on its own thread; this thread turns each
    // chunk into rows and writes it, so the two halves of the work overlap.
    let mut written: u64 = 0;
    let mut text: Vec<u8> = Vec::with_capacity(1 << 22);
    std::thread::scope(|scope| -> Result<(), EventsError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Sampled>>(4);
        scope.spawn(move || sampler.run(&mut rng, &tx));
        for chunk in rx {
            match &mut sink {
                Sink::Csv(w) => {
                    text.clear();
                    let mut clock = Clock::default();
                    for e in &chunk {
                        let label = users[e.user as usize].label;
                        csv_row(
                            &mut text,
                            written,
                            e,
                            label,
                            &mut clock,
                            &user_fields,
                            &texts,
                        );
                        written += 1;
                    }
                    w.write_all(&text).map_err(io(out))?;
                }
                Sink::Parquet(pw) => {
                    let (w, b) = &mut **pw;
                    for e in &chunk {
                        let u = &users[e.user as usize];
                        let prompt = e.prompt.map(|p| texts.text(p)).unwrap_or_default();
                        let event_id = format!("e_{written:09}");
                        written += 1;
                        b.append(&ValidRow {
                            event_id: &event_id,
                            ts: e.ts,
                            user_id: &user_ids[e.user as usize],
                            ip: &u.ip,
                            device_id: &u.device,
                            payment_id: u.payment.as_deref(),
                            surface: SURFACES[usize::from(e.surface)],
                            product: PRODUCTS[usize::from(e.product)],
                            event_type: EVENT_TYPES[usize::from(e.event_type)],
                            prompt: &prompt,
                            tokens_in: e.tokens_in,
                            tokens_out: e.tokens_out,
                            latency_ms: e.latency_ms,
                            blocked: e.blocked,
                            warned: e.warned,
                            is_abuse_gt: Some(i8::from(u.label)),
                        });
                        if b.len() >= 65_536 {
                            let batch = b.finish().map_err(EventsError::Arrow)?;
                            w.write(&batch).map_err(|e| EventsError::Io {
                                path: out.to_path_buf(),
                                source: std::io::Error::other(e),
                            })?;
                        }
                    }
                }
            }
            progress(written);
        }
        Ok(())
    })?;
    match sink {
        Sink::Csv(mut w) => w.flush().map_err(io(out))?,
        Sink::Parquet(pw) => {
            let (mut w, mut b) = *pw;
            let pq = |e: parquet::errors::ParquetError| EventsError::Io {
                path: out.to_path_buf(),
                source: std::io::Error::other(e),
            };
            if !b.is_empty() {
                let batch = b.finish().map_err(EventsError::Arrow)?;
                w.write(&batch).map_err(pq)?;
            }
            w.close().map_err(pq)?;
        }
    }
    Ok(GeneratorSummary {
        events: written,
        users: users.len(),
        abusers: users.iter().filter(|u| u.abuser).count(),
        ring_members: users
            .iter()
            .filter(|u| u.actor.starts_with("ring_"))
            .count(),
        out: out.to_path_buf(),
        ground_truth: gt_path,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_window_outside_four_digit_years_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events.csv");
        // 0000-01-02T00:00:00Z minus 14 days reaches into year -1.
        let cfg = GeneratorConfig {
            events: 10,
            end_micros: -62_167_132_800_000_000,
            ..GeneratorConfig::default()
        };
        let err = generate(&cfg, &out, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("years 0 to 9999"), "{err}");
        assert!(!out.exists());
        // The same window ending a month later is accepted.
        let cfg = GeneratorConfig {
            end_micros: cfg.end_micros + 31 * 86_400_000_000,
            ..cfg
        };
        generate(&cfg, &out, &|_| {}).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        // A window longer than i64 microseconds can hold is refused, not wrapped.
        let huge = GeneratorConfig {
            days: u32::MAX,
            ..cfg.clone()
        };
        let err = generate(&huge, &dir.path().join("huge.csv"), &|_| {}).unwrap_err();
        assert!(err.to_string().contains("years 0 to 9999"), "{err}");
        assert!(text.lines().nth(1).unwrap().contains(",0000-01-"), "{text}");
    }

    #[test]
    fn an_incident_day_outside_the_window_or_too_many_users_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events.csv");
        // 14 days ending at midnight: calendar days 0 to 13.
        let cfg = GeneratorConfig {
            events: 100,
            end_micros: 1_771_113_600_000_000, // 2026-02-15T00:00:00Z
            ..GeneratorConfig::default()
        };
        let late = GeneratorConfig {
            incident_day: Some(14),
            ..cfg.clone()
        };
        let err = generate(&late, &out, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("days 0 to 13"), "{err}");
        let last = GeneratorConfig {
            incident_day: Some(13),
            ..cfg.clone()
        };
        generate(&last, &out, &|_| {}).unwrap();
        let crowd = GeneratorConfig {
            users: MAX_USERS + 1,
            ..cfg
        };
        let err = generate(&crowd, &out, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("at most 100000000"), "{err}");
    }

    /// Whether `text` is `line` with light variation: most of the line's words (lower case,
    /// letters and digits) appear in it.
    fn resembles(text: &str, line: &str) -> bool {
        let words = |t: &str| -> Vec<String> {
            t.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect()
        };
        let have: std::collections::HashSet<String> = words(text).into_iter().collect();
        let want = words(line);
        let found = want.iter().filter(|w| have.contains(*w)).count();
        found * 10 >= want.len() * 7
    }

    #[test]
    fn typing_slips_touch_only_letters_and_repeat_with_their_seed() {
        let line = "Send me the code, please: 123 — ok?";
        let mut seen = std::collections::HashSet::new();
        for seed in 1..200u32 {
            let t = with_typos(line, seed);
            assert_eq!(t, with_typos(line, seed), "deterministic");
            assert_ne!(t, line, "seed {seed} changed nothing");
            // Digits, punctuation and the non-ASCII dash are kept in order.
            let keep =
                |s: &str| -> String { s.chars().filter(|c| !c.is_ascii_alphabetic()).collect() };
            assert_eq!(keep(&t), keep(line), "{t}");
            let diff = t.len().abs_diff(line.len());
            assert!(diff <= 3, "at most three letters added or removed: {t}");
            seen.insert(t);
        }
        assert!(seen.len() > 100, "{} variants of 199 seeds", seen.len());
        assert_eq!(with_typos("", 7), "");
        assert_eq!(with_typos("1 2 3", 7), "1 2 3");
    }

    #[test]
    fn the_realistic_world_hides_abusers_in_ordinary_traffic_and_rare_harm_in_text() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events.csv");
        let cfg = GeneratorConfig {
            events: 60_000,
            users: 2_000,
            rings: 4,
            end_micros: 1_771_113_600_000_000,
            scenario: Scenario::Realistic,
            ..GeneratorConfig::default()
        };
        generate(&cfg, &out, &|_| {}).unwrap();
        let gt = std::fs::read_to_string(dir.path().join("ground_truth.csv")).unwrap();
        let mut kind = std::collections::HashMap::new();
        for l in gt.lines().skip(1) {
            let f: Vec<&str> = l.split(',').collect();
            let k = if f[2].starts_with("rare_harm") {
                "rare"
            } else if f[1] == "1" {
                "abuser"
            } else {
                "benign"
            };
            kind.insert(f[0].to_string(), k);
        }
        let rare_users = kind.values().filter(|k| **k == "rare").count();
        assert_eq!(rare_users, 10, "0.5% of 2,000 users");
        let builtin = TextPool::builtin();
        let mut rare_msgs = std::collections::HashMap::<&str, usize>::new();
        let (mut flipped, mut labelled) = (std::collections::HashSet::new(), 0);
        let mut blocked = std::collections::HashMap::<&str, (usize, usize)>::new();
        let (mut chats, mut distinct) = (0usize, std::collections::HashSet::new());
        let mut reader = csv::Reader::from_path(&out).unwrap();
        for r in reader.records() {
            let r = r.unwrap();
            let (user, ip, prompt, is_blocked, label) = (&r[2], &r[3], &r[9], &r[13], &r[15]);
            let k = kind[user];
            // No giveaway address block for anyone.
            assert!(ip.starts_with("203.0.113."), "{ip}");
            let truth = if k == "benign" { "0" } else { "1" };
            if label != truth {
                flipped.insert(user.to_string());
            }
            labelled += 1;
            if !prompt.is_empty() {
                chats += 1;
                distinct.insert(prompt.to_string());
            }
            if builtin.rare.iter().any(|line| resembles(prompt, line)) {
                assert_eq!(k, "rare", "only rare-harm users write rare lines");
                *rare_msgs.entry(k).or_default() += 1;
            }
            if !prompt.is_empty() {
                let b = blocked.entry(k).or_default();
                b.0 += usize::from(is_blocked == "1");
                b.1 += 1;
            }
        }
        assert!(labelled == 60_000);
        assert!(rare_msgs["rare"] > 20, "{rare_msgs:?}");
        // Chat is varied like real chat: most texts are seen once.
        assert!(
            distinct.len() * 2 > chats,
            "{} distinct of {chats}",
            distinct.len()
        );
        // About 2% of users carry the wrong label.
        assert!((10..=80).contains(&flipped.len()), "{}", flipped.len());
        // Rare-harm users are not blocked more than benign users (filters miss their text).
        let rate = |k: &str| blocked[k].0 as f64 / blocked[k].1 as f64;
        assert!(rate("rare") < rate("abuser"), "{blocked:?}");
        assert!(rate("rare") < 2.0 * rate("benign") + 0.01, "{blocked:?}");
        // The same seed gives the same file.
        let again = dir.path().join("again.csv");
        generate(&cfg, &again, &|_| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }

    #[test]
    fn a_text_pool_file_is_checked_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pool.jsonl");
        std::fs::write(
            &p,
            "{\"text\": \"send me the code\", \"class\": \"rare\"}\n\n{\"text\": \"hi\", \"class\": \"benign\"}\n",
        )
        .unwrap();
        let pool = TextPool::from_jsonl(&p).unwrap();
        assert_eq!(pool.rare, ["send me the code"]);
        assert_eq!(pool.benign, ["hi"]);
        // Classes the file leaves out keep the built-in lines.
        assert_eq!(pool.spam, TextPool::builtin().spam);
        std::fs::write(&p, "{\"text\": \"x\", \"class\": \"gore\"}\n").unwrap();
        let err = TextPool::from_jsonl(&p).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("gore"), "{err}");
        std::fs::write(&p, "{\"text\": \"x\"}\n").unwrap();
        assert!(TextPool::from_jsonl(&p).is_err());
        // A pool with the notebook scenario is refused.
        let cfg = GeneratorConfig {
            events: 10,
            end_micros: 1_771_113_600_000_000,
            pool: Some(TextPool::builtin()),
            ..GeneratorConfig::default()
        };
        let err = generate(&cfg, &dir.path().join("e.csv"), &|_| {}).unwrap_err();
        assert!(err.to_string().contains("--scenario realistic"), "{err}");
    }
}
