//! What the reviewer console's case page shows from the live service: the user-day's
//! features, how the bundle scores it now, and the user's recent messages with their
//! rare-harm scores (the same snapshot and code as `GET /v1/users/{id}`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use vigil_console::{LiveCase, LiveView, Message};

use crate::Service;
use crate::http::{day_number, nearest_of, rare_of, score_keys, windows};

/// The service as the console sees it.
#[derive(Debug)]
pub(crate) struct View(pub(crate) Arc<Service>);

/// A JSON object's fields as (name, text) pairs, in the object's order.
fn fields(v: serde_json::Value) -> Vec<(String, String)> {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n
                        .as_f64()
                        .filter(|x| x.fract() != 0.0)
                        .map_or_else(|| n.to_string(), |x| format!("{x:.4}")),
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl LiveView for View {
    fn case<'a>(
        &'a self,
        user_id: &'a str,
        day: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<LiveCase>> + Send + 'a>> {
        Box::pin(async move {
            let svc = self.0.clone();
            let view = svc.state.view(user_id)?;
            let key = (user_id.to_string(), day_number(day));
            let views = HashMap::from([(user_id.to_string(), view)]);
            let v = views.get(user_id)?;
            let mut out = LiveCase::default();
            let live = svc.live();
            if let Some(i) = v.days.iter().position(|d| d.day == key.1) {
                out.features = fields(serde_json::to_value(&v.days[i]).unwrap_or_default());
                // The ground-truth label (present in generated data) would bias a reviewer.
                out.features
                    .retain(|(k, _)| k != "day" && k != "is_abuse_gt");
                // The rare-harm features, when the bundle learned from them.
                if let Some((day, window)) = live.scorer.rare_features(v, i) {
                    out.features
                        .push(("rare_harm_affinity".into(), format!("{day:.4}")));
                    out.features
                        .push(("rare_harm_affinity_window".into(), format!("{window:.4}")));
                }
            }
            if let Ok(scores) = score_keys(&live.scorer, std::slice::from_ref(&key), &views)
                && let Some(s) = scores.get(&key)
            {
                out.scores = fields(serde_json::to_value(s).unwrap_or_default());
                out.scores
                    .push(("model_version".into(), live.scorer.version().to_string()));
            }
            if svc.rare.is_some() {
                if let Some(r) = rare_of(&svc, windows(&svc, &views)).await.remove(user_id) {
                    let mut nearest = nearest_of(&svc, &r).await;
                    out.affinity = Some(r.affinity);
                    out.messages = r
                        .messages
                        .into_iter()
                        .map(|(text, s)| Message {
                            nearest: nearest.remove(&text).unwrap_or_default(),
                            text,
                            score: Some(s),
                        })
                        .collect();
                }
            } else {
                out.messages = crate::rare::window(&v.prompts, svc.cfg.serve.recent_messages)
                    .into_iter()
                    .map(|t| Message {
                        text: t.to_string(),
                        score: None,
                        nearest: Vec::new(),
                    })
                    .collect();
            }
            Some(out)
        })
    }

    fn identifiers(&self, users: &[String]) -> Vec<vigil_automate::er::UserKeys> {
        let hex = |keys: Vec<u64>| keys.into_iter().map(|k| format!("{k:016x}")).collect();
        users
            .iter()
            .map(|u| {
                let (ips, devices, payments) = self.0.state.identifiers(u).unwrap_or_default();
                vigil_automate::er::UserKeys {
                    user_id: u.clone(),
                    ips: hex(ips),
                    devices: hex(devices),
                    payments: hex(payments),
                }
            })
            .collect()
    }

    fn tokens(&self) -> Result<Vec<vigil_console::TokenRow>, String> {
        let store = crate::TokenStore::open(&self.0.data).map_err(|e| e.to_string())?;
        Ok(store
            .list()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|t| vigil_console::TokenRow {
                id: t.id,
                name: t.name,
                scope: t.scope.as_str().to_string(),
                created_at: t.created_at,
                revoked_at: t.revoked_at,
            })
            .collect())
    }

    fn create_token(&self, scope: &str, name: &str) -> Result<(String, String), String> {
        let scope: crate::Scope = scope.parse()?;
        let store = crate::TokenStore::open(&self.0.data).map_err(|e| e.to_string())?;
        let (token, info) = store.create(scope, name).map_err(|e| e.to_string())?;
        self.0.auth.refresh().map_err(|e| e.to_string())?;
        Ok((token, info.id))
    }

    fn revoke_token(&self, id: &str) -> Result<bool, String> {
        let store = crate::TokenStore::open(&self.0.data).map_err(|e| e.to_string())?;
        let done = store.revoke(id).map_err(|e| e.to_string())?;
        self.0.auth.refresh().map_err(|e| e.to_string())?;
        Ok(done)
    }
}
