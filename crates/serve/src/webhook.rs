//! Webhooks: automated actions and alerts delivered to other systems as signed JSON.
//!
//! Each notice is one JSON body, POSTed to every configured hook whose `kinds` include it,
//! with `Vigil-Signature: sha256=HEX` (HMAC-SHA256 of `TIMESTAMP.BODY` under the hook's
//! secret, read from the environment variable the config names, never from the file),
//! `Vigil-Timestamp` and an `Idempotency-Key` that is the same for every retry and for a
//! repeat of the same notice. A delivery that fails (connection error, timeout, any status
//! but 2xx) is retried with exponential backoff (0.5 s doubling to 60 s) for as long as the
//! service runs; a graceful stop writes what is still undelivered to
//! `DATA/webhooks_pending.jsonl`, and the next start sends it.

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

/// The delivery queue: notices go in without waiting; workers deliver them.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: Option<mpsc::UnboundedSender<(u64, u32)>>,
    hooks: Arc<Vec<Hook>>,
    pending: Pending,
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

fn pending_path(data: &Path) -> PathBuf {
    data.join("webhooks_pending.jsonl")
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
        // Carried over from the last run.
        let path = pending_path(data);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut n = 0;
            for line in text.lines() {
                if let Ok((hook, notice)) = serde_json::from_str::<(usize, Notice)>(line)
                    && hook < hooks.len()
                {
                    me.enqueue(hook, notice);
                    n += 1;
                }
            }
            let _ = std::fs::remove_file(&path);
            if n > 0 {
                tracing::info!(
                    notices = n,
                    "re-sending webhook notices left by the last run"
                );
            }
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if let Ok(mut g) = me.stopped.try_lock() {
            *g = Some(done_rx);
        }
        let (pending, stop, data) = (me.pending.clone(), me.stop.clone(), data.to_path_buf());
        tokio::spawn(async move {
            let mut inflight = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    job = rx.recv() => {
                        let Some((seq, attempt)) = job else { break };
                        let (client, hooks, tx, pending) =
                            (client.clone(), hooks.clone(), tx.clone(), pending.clone());
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
            let left: Vec<(usize, Notice)> = lock(&pending).values().cloned().collect();
            save_pending(&data, &left);
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

    /// Queue a notice for every hook that takes its kind.
    pub fn send(&self, notice: &Notice) {
        for (i, h) in self.hooks.iter().enumerate() {
            if h.kinds.iter().any(|k| k == &notice.kind) {
                self.enqueue(i, notice.clone());
            }
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

fn save_pending(data: &Path, left: &[(usize, Notice)]) {
    if left.is_empty() {
        return;
    }
    let mut text = String::new();
    for item in left {
        if let Ok(line) = serde_json::to_string(item) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    match vigil_core::write_atomic(&pending_path(data), text.as_bytes()) {
        Ok(()) => tracing::warn!(
            notices = left.len(),
            "webhook notices not delivered yet are kept in webhooks_pending.jsonl for the next start"
        ),
        Err((p, e)) => tracing::error!(
            "{} webhook notices could not be kept ({}: {e})",
            left.len(),
            p.display()
        ),
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
