//! The in-process live hub: every committed update fans out from here to WebSocket and SSE
//! clients. Ingest publishes only after its transaction commits, so the feed never shows data
//! the store does not hold. A slow subscriber lags and is told how many updates it missed;
//! it never slows ingest. Viewers get each event through [`LiveEvent::for_viewers`].

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// One live update.
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    /// `result`, `metrics`, `status`, `hello` or `event`.
    pub kind: &'static str,
    pub agent_id: String,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    /// When the control plane published the update.
    pub at_ms: i64,
    pub data: serde_json::Value,
}

impl LiveEvent {
    /// This event as a viewer may see it: every URL in its data scrubbed
    /// ([`vantage_mqtt::redact::scrub_json`]); the same `Arc` when there is none.
    pub fn for_viewers(event: Arc<LiveEvent>) -> Arc<LiveEvent> {
        fn holds_url(value: &serde_json::Value) -> bool {
            match value {
                serde_json::Value::String(text) => text.contains("://"),
                serde_json::Value::Array(items) => items.iter().any(holds_url),
                serde_json::Value::Object(map) => map.values().any(holds_url),
                _ => false,
            }
        }
        if !holds_url(&event.data) {
            return event;
        }
        let mut shown = LiveEvent::clone(&event);
        if vantage_mqtt::redact::scrub_json(&mut shown.data) {
            Arc::new(shown)
        } else {
            event
        }
    }
}

/// Filters a live client subscribes with; `None` matches everything.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct LiveFilter {
    pub region: Option<String>,
    pub agent: Option<String>,
    pub check: Option<String>,
    pub kind: Option<String>,
}

impl LiveFilter {
    /// Whether `event` passes every filter that is set.
    pub fn matches(&self, event: &LiveEvent) -> bool {
        self.region.as_deref().is_none_or(|r| r == event.region)
            && self.agent.as_deref().is_none_or(|a| a == event.agent_id)
            && self
                .check
                .as_deref()
                .is_none_or(|c| event.check_id.as_deref() == Some(c))
            && self.kind.as_deref().is_none_or(|k| k == event.kind)
    }
}

/// The broadcast hub.
#[derive(Debug, Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<LiveEvent>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(8192)
    }
}

impl Hub {
    /// A hub whose subscribers may fall `capacity` updates behind before they lag.
    pub fn new(capacity: usize) -> Hub {
        let (sender, _) = broadcast::channel(capacity);
        Hub { sender }
    }

    /// Publishes an update to every current subscriber.
    pub fn publish(&self, event: LiveEvent) {
        let _ = self.sender.send(Arc::new(event));
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.sender.subscribe()
    }

    /// Number of live subscribers.
    pub fn n_subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &'static str, region: &str, check: Option<&str>) -> LiveEvent {
        LiveEvent {
            kind,
            agent_id: "a1".into(),
            region: region.into(),
            check_id: check.map(Into::into),
            at_ms: 0,
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn filters_match_only_what_they_name() {
        let all = LiveFilter::default();
        let europe = LiveFilter {
            region: Some("europe".into()),
            ..LiveFilter::default()
        };
        let web = LiveFilter {
            check: Some("web".into()),
            kind: Some("result".into()),
            ..LiveFilter::default()
        };
        let e = event("result", "europe", Some("web"));
        let m = event("metrics", "asia", None);
        assert!(all.matches(&e) && all.matches(&m));
        assert!(europe.matches(&e) && !europe.matches(&m));
        assert!(web.matches(&e) && !web.matches(&m));
    }

    #[test]
    fn viewers_see_urls_without_credentials() {
        let mut secret = event("result", "asia", Some("c"));
        secret.data =
            serde_json::json!({"ok": false, "reason": "redirect loop at http://u:pw@h/x"});
        let shown = LiveEvent::for_viewers(Arc::new(secret));
        assert_eq!(
            shown.data["reason"],
            "redirect loop at http://<redacted>@h/x"
        );
        let plain = Arc::new(event("metrics", "asia", None));
        assert!(Arc::ptr_eq(&LiveEvent::for_viewers(plain.clone()), &plain));
    }

    #[tokio::test]
    async fn subscribers_receive_published_events() {
        let hub = Hub::new(4);
        let mut rx = hub.subscribe();
        hub.publish(event("result", "asia", Some("c")));
        assert_eq!(rx.recv().await.unwrap().region, "asia");
    }
}
