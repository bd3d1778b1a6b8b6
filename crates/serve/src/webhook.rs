//! Webhooks: automated actions and alerts delivered to other systems as signed JSON.
//!
//! Each notice is one JSON body, POSTed to every configured hook whose `kinds` include it,
//! with `Vigil-Signature: sha256=HEX` (HMAC-SHA256 of `TIMESTAMP.BODY` under the hook's
//! secret, read from the environment variable the config names, never from the file),
//! `Vigil-Timestamp` and an `Idempotency-Key` that is the same for every retry and for a
//! repeat of the same notice. A delivery that fails (connection error, timeout, any status
//! but 2xx) is retried with exponential backoff (0.5 s doubling to 60 s) for as long as the
//! service runs.
//!
//! Every notice is recorded in `DATA/webhooks.db` (SQLite, WAL) before it is queued, keyed
//! by its idempotency key and hook, and marked when delivered: a notice already recorded is
//! never queued again, undelivered ones are queued again at the next start (after a stop or
//! a kill -9), and the start's re-derivation of the held user-days' actions sends the
//! notices a killed process never got to record.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use vigil_config::WebhookConfig;

use crate::ServeError;

/// One notice to deliver.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Notice {
    /// `action` or `alert`.
    pub kind: String,
    /// The idempotency key (a hash of what the notice is about).
    pub id: String,
    /// The JSON body.
    pub body: serde_json::Value,
}

impl Notice {
    /// A notice whose key is the SHA-256 of `kind` and `about` (so the same event of the
    /// world always has the same key).
    pub fn new(kind: &str, about: &str, body: serde_json::Value) -> Self {
        let id: String = Sha256::digest(format!("{kind}\u{0}{about}").as_bytes())
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            kind: kind.into(),
            id,
            body,
        }
    }
}

/// A configured hook, ready to send.
#[derive(Clone)]
struct Hook {
    url: reqwest::Url,
    secret: Vec<u8>,
    kinds: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Hook {
    /// Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("url", &self.url.as_str())
            .field("kinds", &self.kinds)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Notices not yet delivered, by sequence number: (hook index, notice).
type Pending = Arc<std::sync::Mutex<std::collections::BTreeMap<u64, (usize, Notice)>>>;

/// The record of notices: `DATA/webhooks.db`.
type Store = Arc<std::sync::Mutex<rusqlite::Connection>>;

fn store_path(data: &Path) -> PathBuf {
    data.join("webhooks.db")
}

fn open_store(data: &Path) -> Result<rusqlite::Connection, ServeError> {
    let path = store_path(data);
    let conn = rusqlite::Connection::open(&path).map_err(|e| ServeError::store(&path, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| ServeError::store(&path, e))?;
    // WAL with synchronous NORMAL: a committed record survives the process being killed
    // (not a power cut), at no fsync per notice.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS notices (
             key TEXT NOT NULL, hook INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
             day INTEGER NOT NULL, delivered INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (key, hook));",
    )
    .map_err(|e| ServeError::store(&path, e))?;
    Ok(conn)
}

fn lock_store(s: &Store) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The delivery queue: notices go in without waiting; workers deliver them.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: Option<mpsc::UnboundedSender<(u64, u32)>>,
    hooks: Arc<Vec<Hook>>,
    pending: Pending,
    store: Option<Store>,
    seq: Arc<AtomicU64>,
    stop: Arc<tokio::sync::Notify>,
    stopped: Arc<tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
}

/// Check the hooks of a configuration (URL, secret present); the error names the hook.
fn hooks_of(cfg: &[WebhookConfig]) -> Result<Vec<Hook>, ServeError> {
    cfg.iter()
        .enumerate()
        .map(|(i, h)| {
            let url = reqwest::Url::parse(&h.url).map_err(|e| {
                ServeError::Usage(format!("serve.webhooks[{i}].url `{}`: {e}", h.url))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ServeError::Usage(format!(
                    "serve.webhooks[{i}].url must be http:// or https://"
                )));
            }
            let secret = std::env::var(&h.secret_env).map_err(|_| {
                ServeError::Usage(format!(
                    "serve.webhooks[{i}]: the environment variable `{}` (secret_env) is not set; \
                     put the hook's signing secret there",
                    h.secret_env
                ))
            })?;
            if secret.len() < 16 {
                return Err(ServeError::Usage(format!(
                    "serve.webhooks[{i}]: the secret in `{}` is shorter than 16 bytes",
                    h.secret_env
                )));
            }
            Ok(Hook {
                url,
                secret: secret.into_bytes(),
                kinds: h.kinds.clone(),
                timeout: Duration::from_secs_f64(h.timeout_secs.max(0.1)),
            })
        })
        .collect()
}

/// The signature header value of `body` sent at `ts` (seconds since 1970).
pub fn signature(secret: &[u8], ts: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is unreachable.
        Err(_) => return String::new(),
    };
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn lock(
    p: &Pending,
) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, (usize, Notice)>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Webhooks {
    /// Check the hooks and start the delivery worker; notices a previous run left
    /// undelivered are queued first.
    pub fn start(cfg: &[WebhookConfig], data: &Path) -> Result<Self, ServeError> {
        let hooks = Arc::new(hooks_of(cfg)?);
        let mut me = Self {
            tx: None,
            hooks: hooks.clone(),
            pending: Pending::default(),
            store: None,
            seq: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(tokio::sync::Notify::new()),
            stopped: Arc::new(tokio::sync::Mutex::new(None)),
        };
        if hooks.is_empty() {
            return Ok(me);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ServeError::Internal(format!("webhook client: {e}")))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, u32)>();
        me.tx = Some(tx.clone());
        // Recorded but not delivered by an earlier run (stopped or killed).
        let conn = open_store(data)?;
        let left: Vec<(usize, Notice)> = {
            let path = store_path(data);
            let err = |e| ServeError::store(&path, e);
            let mut st = conn
                .prepare(
                    "SELECT hook, kind, key, body FROM notices WHERE delivered = 0 ORDER BY rowid",
                )
                .map_err(err)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(err)?;
            let mut left = Vec::new();
            for row in rows {
                let (hook, kind, id, body) = row.map_err(err)?;
                let Ok(body) = serde_json::from_str(&body) else {
                    continue;
                };
                if let Ok(hook) = usize::try_from(hook)
                    && hook < hooks.len()
                {
                    left.push((hook, Notice { kind, id, body }));
                }
            }
            left
        };
        me.store = Some(Arc::new(std::sync::Mutex::new(conn)));
        if !left.is_empty() {
            tracing::info!(
                notices = left.len(),
                "sending webhook notices an earlier run did not deliver"
            );
        }
        for (hook, notice) in left {
            me.enqueue(hook, notice);
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if let Ok(mut g) = me.stopped.try_lock() {
            *g = Some(done_rx);
        }
        let (pending, stop, store) = (me.pending.clone(), me.stop.clone(), me.store.clone());
        tokio::spawn(async move {
            let mut inflight = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    job = rx.recv() => {
                        let Some((seq, attempt)) = job else { break };
                        let (client, hooks, tx, pending, store) =
                            (client.clone(), hooks.clone(), tx.clone(), pending.clone(), store.clone());
                        inflight.spawn(async move {
                            if attempt > 0 {
                                let backoff = 0.5 * 2f64.powi(attempt.min(8) as i32 - 1);
                                tokio::time::sleep(Duration::from_secs_f64(backoff.min(60.0))).await;
                            }
                            let Some((hook, notice)) = lock(&pending).get(&seq).cloned() else {
                                return;
                            };
                            match deliver(&client, &hooks[hook], &notice).await {
                                Ok(()) => {
                                    lock(&pending).remove(&seq);
                                    if let Some(store) = store {
                                        let key = notice.id.clone();
                                        let done = tokio::task::spawn_blocking(move || {
                                            lock_store(&store).execute(
                                                "UPDATE notices SET delivered = 1 WHERE key = ?1 AND hook = ?2",
                                                rusqlite::params![key, hook as i64],
                                            )
                                        })
                                        .await;
                                        if !matches!(done, Ok(Ok(_))) {
                                            tracing::warn!("a delivered webhook notice could not be marked; it may be sent again after a restart");
                                        }
                                    }
                                    metrics::counter!("vigil_webhook_deliveries_total", "result" => "delivered").increment(1);
                                }
                                Err(why) => {
                                    metrics::counter!("vigil_webhook_deliveries_total", "result" => "failed_attempt").increment(1);
                                    tracing::warn!(hook = %hooks[hook].url, attempt = attempt + 1, "webhook delivery failed: {why}; retrying");
                                    let _ = tx.send((seq, attempt + 1));
                                }
                            }
                        });
                    }
                    () = stop.notified() => break,
                    Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                }
                metrics::gauge!("vigil_webhook_backlog").set(lock(&pending).len() as f64);
            }
            inflight.abort_all();
            while inflight.join_next().await.is_some() {}
            let left = lock(&pending).len();
            if left > 0 {
                tracing::warn!(
                    notices = left,
                    "webhook notices not delivered yet are kept in webhooks.db for the next start"
                );
            }
            let _ = done_tx.send(());
        });
        Ok(me)
    }

    fn enqueue(&self, hook: usize, notice: Notice) {
        let Some(tx) = &self.tx else { return };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(seq, (hook, notice));
        let _ = tx.send((seq, 0));
    }

    /// Record and queue a notice about `day` (days since 1970) for every hook that takes its
    /// kind, unless that hook already has a notice with the same key (sent or pending). If
    /// the record cannot be written the notice is still queued (and may be lost to a kill).
    pub fn send(&self, notice: &Notice, day: i32) {
        for (i, h) in self.hooks.iter().enumerate() {
            if !h.kinds.iter().any(|k| k == &notice.kind) {
                continue;
            }
            let new = match &self.store {
                Some(store) => lock_store(store)
                    .execute(
                        "INSERT OR IGNORE INTO notices (key, hook, kind, body, day) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![
                            notice.id,
                            i as i64,
                            notice.kind,
                            notice.body.to_string(),
                            day
                        ],
                    )
                    .map(|n| n == 1)
                    .unwrap_or_else(|e| {
                        tracing::error!("cannot record a webhook notice: {e}");
                        true
                    }),
                None => true,
            };
            if new {
                self.enqueue(i, notice.clone());
            }
        }
    }

    /// Forget delivered notices about days before `day` (their user-days are no longer held,
    /// so no start derives them again).
    pub fn forget_before(&self, day: i32) {
        if let Some(store) = &self.store
            && let Err(e) = lock_store(store).execute(
                "DELETE FROM notices WHERE delivered = 1 AND day < ?1",
                [day],
            )
        {
            tracing::warn!("cannot prune webhooks.db: {e}");
        }
    }

    /// Notices not yet delivered.
    pub fn backlog(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Stop delivering; what is undelivered is kept for the next start.
    pub async fn shutdown(&self) {
        self.stop.notify_one();
        let rx = self.stopped.lock().await.take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
    }
}

async fn deliver(client: &reqwest::Client, hook: &Hook, notice: &Notice) -> Result<(), String> {
    let body = serde_json::to_vec(&notice.body).map_err(|e| e.to_string())?;
    let ts = chrono::Utc::now().timestamp();
    let resp = client
        .post(hook.url.clone())
        .timeout(hook.timeout)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", &notice.id)
        .header("Vigil-Timestamp", ts.to_string())
        .header("Vigil-Signature", signature(&hook.secret, ts, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", resp.status()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"Jefe", b"1700000000.{}", hashlib.sha256).hexdigest()
        let sig = signature(b"Jefe", 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "sha256=d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207"
        );
        assert_ne!(sig, signature(b"Jefe", 1_700_000_001, b"{}"));
        assert_ne!(sig, signature(b"Jeff", 1_700_000_000, b"{}"));
    }

    #[test]
    fn a_notice_key_names_what_it_is_about_not_when_it_was_sent() {
        let a = Notice::new("action", "u1 day block", serde_json::json!({"risk": 0.9}));
        let b = Notice::new("action", "u1 day block", serde_json::json!({"risk": 0.8}));
        let c = Notice::new("alert", "u1 day block", serde_json::json!({}));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.id.len(), 32);
    }

    #[test]
    fn hooks_without_their_secret_in_the_environment_are_refused_by_name() {
        let cfg = [WebhookConfig {
            url: "http://127.0.0.1:9/hook".into(),
            secret_env: "VIGIL_UNIT_TEST_SECRET_THAT_IS_NEVER_SET".into(),
            kinds: vec!["action".into()],
            timeout_secs: 1.0,
        }];
        let err = hooks_of(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("VIGIL_UNIT_TEST_SECRET_THAT_IS_NEVER_SET"),
            "{err}"
        );
        let bad = [WebhookConfig {
            url: "ftp://x".into(),
            ..cfg[0].clone()
        }];
        assert!(hooks_of(&bad).unwrap_err().to_string().contains("http"));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let h = Hook {
            url: reqwest::Url::parse("http://127.0.0.1:9/").unwrap(),
            secret: b"super-secret-value".to_vec(),
            kinds: vec![],
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{h:?}").contains("super-secret"));
    }
}
