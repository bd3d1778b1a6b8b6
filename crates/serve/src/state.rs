//! Per-user state, updated one event at a time: the user-day features of `user_day_features`,
//! the per-user history and identifier fanout of `user_context`, velocity counters over
//! event time, and the user's recent chat messages.
//!
//! Every aggregate is commutative, so events of a day may arrive in any order and in any
//! batches and the state equals the batch tables over the same events. State is owned per
//! user id: users live in shards chosen by a hash of the id, each shard behind its own lock,
//! and a request touches only the shards of its own users. The one shared structure is the
//! identifier index (how many users share an IP, device or payment token), itself keyed by
//! identifier and sharded the same way.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use vigil_config::ServeConfig;

use crate::event::{DAY_MICROS, Event, day_of};

const SHARDS: usize = 64;
/// Velocity windows, in microseconds of event time.
const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 3_600_000_000;
/// Most events remembered for the velocity window of one user.
const WINDOW_CAP: usize = 4096;

/// A 64-bit key for an identifier of one kind (the low half of the dataset's 128-bit event
/// fingerprint; collisions at 64 bits are ~1e-7 among a million identifiers).
fn key(kind: char, value: &str) -> u64 {
    vigil_events::dataset::event_key(&format!("{kind}\u{0}{value}")) as u64
}

fn shard_of(id: &str) -> usize {
    (key('u', id) % SHARDS as u64) as usize
}

/// Insert into a sorted vector; true when the value is new.
fn insert_sorted(v: &mut Vec<u64>, x: u64) -> bool {
    match v.binary_search(&x) {
        Ok(_) => false,
        Err(i) => {
            // Most users have one or two of each identifier: no room for four.
            if v.len() < 8 {
                v.reserve_exact(1);
            }
            v.insert(i, x);
            true
        }
    }
}

/// The aggregate of `day`, inserted in order (with room for it alone) when new.
fn day_entry(days: &mut Vec<(i32, DayAgg)>, day: i32) -> &mut DayAgg {
    let at = match days.binary_search_by_key(&day, |(d, _)| *d) {
        Ok(i) => i,
        Err(i) => {
            days.reserve_exact(1);
            days.insert(i, (day, DayAgg::default()));
            i
        }
    };
    &mut days[at].1
}

/// Days kept per user: of detail, and of scored messages.
#[derive(Debug, Clone, Copy)]
struct Keep {
    days: i32,
    rare: i32,
}

/// One user-day's running aggregates (the columns of `core_user_day`).
#[derive(Debug, Clone, Default)]
struct DayAgg {
    n_events: i64,
    n_chat: i64,
    tokens_in: i64,
    tokens_out: i64,
    latency_sum: i64,
    n_blocked: i64,
    n_warned: i64,
    ips: Vec<u64>,
    devices: Vec<u64>,
    is_abuse_gt: Option<i8>,
    /// The day's newest non-empty chat prompts as (ts, event_id, text), in time order.
    prompts: Vec<(i64, String, String)>,
}

/// The features of one user-day, exactly as `user_day_features` defines them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DayFeatures {
    /// Days since 1970.
    #[serde(skip)]
    pub day: i32,
    #[allow(missing_docs)]
    pub n_events: i64,
    #[allow(missing_docs)]
    pub n_chat: i64,
    #[allow(missing_docs)]
    pub tokens_in_sum: i64,
    #[allow(missing_docs)]
    pub tokens_out_sum: i64,
    #[allow(missing_docs)]
    pub latency_ms_avg: f64,
    #[allow(missing_docs)]
    pub n_blocked: i64,
    #[allow(missing_docs)]
    pub n_warned: i64,
    #[allow(missing_docs)]
    pub n_ips: i64,
    #[allow(missing_docs)]
    pub n_devices: i64,
    #[allow(missing_docs)]
    pub is_abuse_gt: Option<i8>,
    #[allow(missing_docs)]
    pub block_rate: f64,
    #[allow(missing_docs)]
    pub warn_rate: f64,
    #[allow(missing_docs)]
    pub chat_fraction: f64,
}

/// The user's history and identifier fanout, exactly as `user_context` defines them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UserContext {
    #[allow(missing_docs)]
    pub user_block_rate: f64,
    #[allow(missing_docs)]
    pub user_warn_rate: f64,
    #[allow(missing_docs)]
    pub user_days_active: f64,
    #[allow(missing_docs)]
    pub user_events_per_day: f64,
    #[allow(missing_docs)]
    pub ip_fanout: f64,
    #[allow(missing_docs)]
    pub device_fanout: f64,
    #[allow(missing_docs)]
    pub payment_fanout: f64,
}

/// Velocity over event time, ending at the user's newest event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Velocity {
    /// Events in the minute up to the newest event.
    pub events_last_minute: u64,
    /// Events in the hour up to the newest event.
    pub events_last_hour: u64,
    /// Distinct IPs in that hour.
    pub distinct_ips_last_hour: u64,
    /// Distinct devices in that hour.
    pub distinct_devices_last_hour: u64,
}

/// A snapshot of one user for scoring and `GET /v1/users/{id}`.
#[derive(Debug, Clone)]
pub struct UserView {
    /// The retained days, oldest first.
    pub days: Vec<DayFeatures>,
    /// The history and fanout.
    pub context: UserContext,
    /// Velocity counters.
    pub velocity: Velocity,
    /// The newest event's timestamp (microseconds).
    pub newest_ts: i64,
    /// The normalised recent chat prompts of each retained day (same order as `days`).
    pub prompts: Vec<Vec<String>>,
    /// The scored chat messages per day, `(day, [(text key, score)])`, oldest first: the
    /// retained days and the rare-harm window's days before them (empty without a Sentinel
    /// index).
    pub rare: Vec<(i32, Vec<(u64, f64)>)>,
}

#[derive(Debug, Default, Clone)]
struct UserState {
    /// Sorted by day; a vector, not a map: a user holds one or two days, and a B-tree node
    /// has room for eleven.
    days: Vec<(i32, DayAgg)>,
    /// Every day the user was active on (also the days no longer kept in detail).
    active_days: Vec<i32>,
    events: i64,
    chats: i64,
    blocked: i64,
    warned: i64,
    /// Identifier keys the user has used, ever (sorted).
    ips: Vec<u64>,
    devices: Vec<u64>,
    payments: Vec<u64>,
    newest_ts: i64,
    /// (ts, ip key, device key) of the last hour of event time, sorted by ts.
    window: VecDeque<(i64, u64, u64)>,
    /// Every scored chat message per day as (text key, rare-harm score), in arrival order
    /// (the affinity does not depend on it), sorted by day; kept longer than `days` by the
    /// rare-harm window, so a retained day's window is whole.
    rare: Vec<(i32, Vec<(u64, f64)>)>,
}

/// The shared identifier index: how many distinct users each identifier has.
#[derive(Debug)]
struct KeyIndex {
    shards: Vec<Mutex<HashMap<u64, u32>>>,
}

impl KeyIndex {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, k: u64) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        let s = &self.shards[(k % SHARDS as u64) as usize];
        s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add_user(&self, k: u64) {
        *self.shard(k).entry(k).or_insert(0) += 1;
    }

    fn users(&self, k: u64) -> u32 {
        self.shard(k).get(&k).copied().unwrap_or(0)
    }
}

/// One UTC day's totals over every user: the columns of `core_day_metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayTotals {
    /// Events.
    pub n_events: i64,
    /// Chat events.
    pub n_chat: i64,
    /// Users with an event that day.
    pub n_active_users: i64,
    /// Blocked events.
    pub n_blocked: i64,
    /// Warned events.
    pub n_warned: i64,
    /// Sum of `latency_ms`.
    pub latency_sum: i64,
}

/// Every active user's state.
#[derive(Debug)]
pub struct State {
    shards: Vec<Mutex<HashMap<String, UserState>>>,
    keys: KeyIndex,
    days_kept: i32,
    /// Days of scored messages kept: `days_kept` plus the rare-harm window's days before.
    rare_kept: i32,
    recent: usize,
    idle_evict_days: u32,
    /// The newest event time seen by the service (for idle eviction).
    watermark: std::sync::atomic::AtomicI64,
    /// Totals per day over every user (for the alert rules), all days.
    totals: Mutex<BTreeMap<i32, DayTotals>>,
}

impl State {
    /// Empty state with the bounds of `[serve]`.
    pub fn new(cfg: &ServeConfig) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keys: KeyIndex::new(),
            days_kept: i32::try_from(cfg.state_days).unwrap_or(i32::MAX).max(1),
            rare_kept: i32::try_from(cfg.state_days).unwrap_or(i32::MAX).max(1),
            recent: cfg.recent_messages,
            idle_evict_days: cfg.idle_evict_days,
            watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    /// Keep scored messages for the `window_days` days before each retained day too (the
    /// rare-harm window of a bundle that learned from it).
    pub fn with_rare_window(mut self, window_days: u32) -> Self {
        let w = i32::try_from(window_days).unwrap_or(i32::MAX).max(1);
        self.rare_kept = self.days_kept.saturating_add(w - 1);
        self
    }

    /// The rare-harm window (days) whose messages are kept before each retained day.
    pub fn rare_window(&self) -> u32 {
        u32::try_from(self.rare_kept - self.days_kept + 1).unwrap_or(1)
    }

    /// Totals per day, oldest first.
    pub fn day_totals(&self) -> Vec<(i32, DayTotals)> {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(d, t)| (*d, *t))
            .collect()
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<String, UserState>> {
        self.shards[shard_of(user)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Users held in memory.
    pub fn users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// Fold one accepted event into its user's state; `rare` is its chat message's
    /// rare-harm score, when the service scores messages.
    pub fn apply(&self, e: &Event, rare: Option<f64>) {
        self.watermark
            .fetch_max(e.ts, std::sync::atomic::Ordering::Relaxed);
        let (new_keys, new_day) = {
            let mut shard = self.shard(&e.user_id);
            let u = shard.entry(e.user_id.clone()).or_default();
            let new_day = u.active_days.binary_search(&e.day()).is_err();
            (u.apply(e, rare, self.keep(), self.recent), new_day)
        };
        for k in new_keys {
            self.keys.add_user(k);
        }
        let mut totals = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = totals.entry(e.day()).or_default();
        t.n_events += 1;
        t.n_chat += i64::from(e.event_type == "chat");
        t.n_active_users += i64::from(new_day);
        t.n_blocked += i64::from(e.blocked);
        t.n_warned += i64::from(e.warned);
        t.latency_sum += e.latency_ms;
    }

    /// Every user-day held in detail (for deriving cases and caps at start).
    pub fn user_days(&self) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (user, u) in s.iter() {
                out.extend(u.days.iter().map(|(d, _)| (user.clone(), *d)));
            }
        }
        out
    }

    /// The time of the newest event seen (microseconds), once there is one.
    pub fn newest_ts(&self) -> Option<i64> {
        let w = self.watermark.load(std::sync::atomic::Ordering::Relaxed);
        (w != i64::MIN).then_some(w)
    }

    /// The day of the newest event seen, once there is one.
    pub fn newest_day(&self) -> Option<i32> {
        let w = self.watermark.load(std::sync::atomic::Ordering::Relaxed);
        (w != i64::MIN).then(|| day_of(w))
    }

    fn keep(&self) -> Keep {
        Keep {
            days: self.days_kept,
            rare: self.rare_kept,
        }
    }

    /// Days of per-day detail kept per user.
    pub fn days_kept(&self) -> i32 {
        self.days_kept
    }

    /// Drop users whose newest event is more than `idle_evict_days` behind the newest event
    /// seen; returns how many.
    pub fn evict_idle(&self) -> usize {
        if self.idle_evict_days == 0 {
            return 0;
        }
        let w = self.watermark.load(std::sync::atomic::Ordering::Relaxed);
        let cut = w.saturating_sub(i64::from(self.idle_evict_days) * DAY_MICROS);
        let mut n = 0;
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = s.len();
            s.retain(|_, u| u.newest_ts >= cut);
            n += before - s.len();
        }
        n
    }

    /// A snapshot of one user, or `None` when the service holds nothing for them.
    pub fn view(&self, user: &str) -> Option<UserView> {
        let u = self.shard(user).get(user)?.clone();
        Some(self.snapshot(&u, &[]))
    }

    /// What the user would look like with `events` added (`rare[i]`: the rare-harm score
    /// of `events[i]`, if any), without storing anything (`POST /v1/score`). `None` when
    /// `events` is empty and the user is unknown.
    pub fn what_if(&self, user: &str, events: &[Event], rare: &[Option<f64>]) -> Option<UserView> {
        let mut u = self.shard(user).get(user).cloned();
        if u.is_none() && events.is_empty() {
            return None;
        }
        let u = u.get_or_insert_with(UserState::default);
        let mut new_keys = Vec::new();
        for (i, e) in events.iter().enumerate().filter(|(_, e)| e.user_id == user) {
            let score = rare.get(i).copied().flatten();
            new_keys.extend(u.apply(e, score, self.keep(), self.recent));
        }
        Some(self.snapshot(u, &new_keys))
    }

    /// The identifier keys a user has used, ever: (IPs, devices, payment tokens), each the
    /// dataset's 64-bit key of the identifier, sorted. `None` for a user not held.
    pub fn identifiers(&self, user: &str) -> Option<(Vec<u64>, Vec<u64>, Vec<u64>)> {
        let shard = self.shard(user);
        shard
            .get(user)
            .map(|u| (u.ips.clone(), u.devices.clone(), u.payments.clone()))
    }

    /// A user's view; `extra_keys` are identifiers the user would newly share.
    fn snapshot(&self, u: &UserState, extra_keys: &[u64]) -> UserView {
        let days: Vec<DayFeatures> = u.days.iter().map(|(day, d)| features(*day, d)).collect();
        let prompts = u
            .days
            .iter()
            .map(|(_, d)| d.prompts.iter().map(|p| p.2.clone()).collect())
            .collect();
        let rare = u.rare.clone();
        let rate = |x: i64| {
            if u.chats > 0 {
                x as f64 / u.chats as f64
            } else {
                0.0
            }
        };
        let distinct = |f: fn(&(i64, u64, u64)) -> u64| {
            let mut v: Vec<u64> = u.window.iter().map(f).collect();
            v.sort_unstable();
            v.dedup();
            v.len() as u64
        };
        let velocity = Velocity {
            events_last_minute: u
                .window
                .iter()
                .filter(|w| w.0 > u.newest_ts - MINUTE)
                .count() as u64,
            events_last_hour: u.window.len() as u64,
            distinct_ips_last_hour: distinct(|w| w.1),
            distinct_devices_last_hour: distinct(|w| w.2),
        };
        let fanout = |keys: &[u64]| {
            let n = keys
                .iter()
                .map(|k| self.keys.users(*k) + u32::from(extra_keys.contains(k)))
                .max()
                .unwrap_or(0);
            f64::from(n)
        };
        let n_days = u.active_days.len().max(1) as f64;
        UserView {
            days,
            context: UserContext {
                user_block_rate: rate(u.blocked),
                user_warn_rate: rate(u.warned),
                user_days_active: u.active_days.len() as f64,
                user_events_per_day: u.events as f64 / n_days,
                ip_fanout: fanout(&u.ips),
                device_fanout: fanout(&u.devices),
                payment_fanout: fanout(&u.payments),
            },
            velocity,
            newest_ts: u.newest_ts,
            prompts,
            rare,
        }
    }
}

impl UserState {
    /// Fold one event in; returns the identifier keys new to this user.
    fn apply(&mut self, e: &Event, rare: Option<f64>, keep: Keep, recent: usize) -> Vec<u64> {
        let days_kept = keep.days;
        let u = self;
        let (ip, dev) = (key('i', &e.ip), key('d', &e.device_id));
        let pay = e
            .payment_id
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| key('p', p));
        let mut new_keys: Vec<u64> = Vec::new();
        let day = e.day();
        let chat = e.event_type == "chat";
        u.events += 1;
        u.chats += i64::from(chat);
        u.blocked += i64::from(e.blocked);
        u.warned += i64::from(e.warned);
        if let Err(i) = u.active_days.binary_search(&day) {
            u.active_days.insert(i, day);
        }
        if insert_sorted(&mut u.ips, ip) {
            new_keys.push(ip);
        }
        if insert_sorted(&mut u.devices, dev) {
            new_keys.push(dev);
        }
        if let Some(p) = pay
            && insert_sorted(&mut u.payments, p)
        {
            new_keys.push(p);
        }
        let newest = if u.events == 1 {
            e.ts
        } else {
            u.newest_ts.max(e.ts)
        };
        if day > day_of(newest) - days_kept {
            let d = day_entry(&mut u.days, day);
            d.n_events += 1;
            d.n_chat += i64::from(chat);
            d.tokens_in += e.tokens_in;
            d.tokens_out += e.tokens_out;
            d.latency_sum += e.latency_ms;
            d.n_blocked += i64::from(e.blocked);
            d.n_warned += i64::from(e.warned);
            insert_sorted(&mut d.ips, ip);
            insert_sorted(&mut d.devices, dev);
            if let Some(g) = e.is_abuse_gt {
                d.is_abuse_gt = Some(d.is_abuse_gt.map_or(g, |x| x.max(g)));
            }
            if chat && !e.prompt.is_empty() && recent > 0 {
                let item = (e.ts, e.event_id.clone(), e.prompt.clone());
                let at = d
                    .prompts
                    .partition_point(|p| (p.0, p.1.as_str()) < (item.0, item.1.as_str()));
                d.prompts.insert(at, item);
                if d.prompts.len() > recent {
                    d.prompts.remove(0);
                }
            }
        }
        if let Some(score) = rare.filter(|_| crate::rare::chat_prompt(e).is_some())
            && day > day_of(newest) - keep.rare
        {
            let at = match u.rare.binary_search_by_key(&day, |(d, _)| *d) {
                Ok(i) => i,
                Err(i) => {
                    u.rare.insert(i, (day, Vec::new()));
                    i
                }
            };
            u.rare[at]
                .1
                .push((vigil_sentinel::text_key(&e.prompt), score));
        }
        if e.ts > u.newest_ts || u.events == 1 {
            u.newest_ts = e.ts;
            let keep_from = day_of(e.ts) - days_kept;
            u.days.retain(|(d, _)| *d > keep_from);
            let rare_from = day_of(e.ts) - keep.rare;
            u.rare.retain(|(d, _)| *d > rare_from);
        }
        let at = u.window.partition_point(|w| w.0 <= e.ts);
        u.window.insert(at, (e.ts, ip, dev));
        let from = u.newest_ts - HOUR;
        while u.window.front().is_some_and(|w| w.0 <= from) || u.window.len() > WINDOW_CAP {
            u.window.pop_front();
        }
        new_keys
    }
}

fn features(day: i32, d: &DayAgg) -> DayFeatures {
    let ratio = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    DayFeatures {
        day,
        n_events: d.n_events,
        n_chat: d.n_chat,
        tokens_in_sum: d.tokens_in,
        tokens_out_sum: d.tokens_out,
        latency_ms_avg: ratio(d.latency_sum, d.n_events),
        n_blocked: d.n_blocked,
        n_warned: d.n_warned,
        n_ips: d.ips.len() as i64,
        n_devices: d.devices.len() as i64,
        is_abuse_gt: d.is_abuse_gt,
        block_rate: ratio(d.n_blocked, d.n_chat),
        warn_rate: ratio(d.n_warned, d.n_chat),
        chat_fraction: ratio(d.n_chat, d.n_events),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(id: &str, user: &str, ts_s: i64, ip: &str, chat: bool, blocked: i8) -> Event {
        Event {
            event_id: id.into(),
            ts: ts_s * 1_000_000,
            user_id: user.into(),
            ip: ip.into(),
            device_id: format!("d-{user}"),
            payment_id: None,
            surface: "web".into(),
            product: "p".into(),
            event_type: if chat { "chat" } else { "login" }.into(),
            prompt: if chat {
                format!("hello {id}")
            } else {
                String::new()
            },
            tokens_in: 10,
            tokens_out: 20,
            latency_ms: 101,
            blocked,
            warned: 0,
            is_abuse_gt: Some(0),
        }
    }

    #[test]
    fn any_order_of_a_days_events_gives_the_same_features_and_counters() {
        let cfg = ServeConfig::default();
        let events: Vec<Event> = (0..40)
            .map(|i| {
                ev(
                    &format!("e{i}"),
                    if i % 3 == 0 { "a" } else { "b" },
                    1_767_225_600 + i * 97,
                    &format!("10.0.0.{}", i % 5),
                    i % 2 == 0,
                    i8::from(i % 7 == 0),
                )
            })
            .collect();
        let forward = State::new(&cfg);
        // Every chat message scored (the score a function of the text, as the service's).
        let score = |e: &Event| Some(e.prompt.len() as f64 / 100.0);
        events.iter().for_each(|e| forward.apply(e, score(e)));
        let backward = State::new(&cfg);
        events
            .iter()
            .rev()
            .for_each(|e| backward.apply(e, score(e)));
        for user in ["a", "b"] {
            let (f, b) = (forward.view(user).unwrap(), backward.view(user).unwrap());
            assert_eq!(f.days, b.days);
            assert_eq!(f.context, b.context);
            assert_eq!(f.velocity, b.velocity);
            assert_eq!(f.prompts, b.prompts);
            let sorted = |v: &UserView| {
                let mut r = v.rare.clone();
                r.iter_mut()
                    .for_each(|d| d.1.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1))));
                r
            };
            assert_eq!(sorted(&f), sorted(&b));
            let chats = events
                .iter()
                .filter(|e| e.user_id == user && !e.prompt.is_empty());
            assert_eq!(
                f.rare.iter().map(|d| d.1.len()).sum::<usize>(),
                chats.count()
            );
        }
        let a = forward.view("a").unwrap();
        // Users a and b share the five IPs: every IP has two users.
        assert_eq!(a.context.ip_fanout, 2.0);
        assert_eq!(a.days[0].n_events, 14);
        assert_eq!(a.days[0].n_ips, 5);
        assert_eq!(a.days[0].latency_ms_avg, 101.0);
    }

    #[test]
    fn only_state_days_of_detail_are_kept_but_history_counts_every_day() {
        let cfg = ServeConfig {
            state_days: 2,
            ..ServeConfig::default()
        };
        let s = State::new(&cfg);
        for d in 0..5 {
            s.apply(
                &ev(
                    &format!("e{d}"),
                    "u",
                    1_767_225_600 + d * 86_400,
                    "1.1.1.1",
                    true,
                    0,
                ),
                None,
            );
        }
        let v = s.view("u").unwrap();
        assert_eq!(v.days.len(), 2);
        assert_eq!(v.context.user_days_active, 5.0);
        assert_eq!(v.context.user_events_per_day, 1.0);
    }

    #[test]
    fn velocity_counts_event_time_not_arrival_time() {
        let s = State::new(&ServeConfig::default());
        let t0 = 1_767_225_600;
        for i in 0..10 {
            s.apply(
                &ev(
                    &format!("e{i}"),
                    "u",
                    t0 + i * 30,
                    &format!("ip{i}"),
                    false,
                    0,
                ),
                None,
            );
        }
        // Two hours later: the window holds only the new event.
        s.apply(&ev("late", "u", t0 + 7200, "ip0", false, 0), None);
        let v = s.view("u").unwrap().velocity;
        assert_eq!(v.events_last_hour, 1);
        assert_eq!(v.events_last_minute, 1);
        assert_eq!(v.distinct_ips_last_hour, 1);
    }

    #[test]
    fn idle_users_are_evicted_behind_the_watermark() {
        let cfg = ServeConfig {
            idle_evict_days: 3,
            ..ServeConfig::default()
        };
        let s = State::new(&cfg);
        s.apply(&ev("a", "old", 1_767_225_600, "x", false, 0), None);
        s.apply(
            &ev("b", "new", 1_767_225_600 + 10 * 86_400, "x", false, 0),
            None,
        );
        assert_eq!(s.evict_idle(), 1);
        assert!(s.view("old").is_none());
        assert!(s.view("new").is_some());
    }
}
