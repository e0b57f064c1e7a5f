//! What happened to each plugin: loaded, swapped, refused, removed, with times — kept per
//! plugin (a bounded list) for `GET /plugins/{name}/history`, and broadcast as it happens
//! for `GET /stream`.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::runtime::same_name;

/// Changes kept per plugin; older ones are forgotten.
pub const KEPT_PER_PLUGIN: usize = 100;

/// Changes a slow listener may fall behind by before it is told it lagged.
const LIVE_CAPACITY: usize = 256;

/// One change of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum PluginChange {
    /// Its first version was loaded (at startup or when its file appeared).
    Loaded {
        /// The component's content hash.
        hash: String,
        /// The version its author gave.
        version: String,
    },
    /// A new version replaced the serving one.
    Swapped {
        /// The hash that served until now.
        from: String,
        /// The hash serving from now on.
        to: String,
        /// The version its author gave.
        version: String,
    },
    /// A file was refused; a version already serving keeps serving.
    Refused {
        /// Why, as the host reports it.
        reason: String,
    },
    /// Its file was removed and it was unsubscribed.
    Removed,
}

/// A change of the plugin `plugin` at `time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginEvent {
    /// The plugin's name (for a refused file that never loaded, its file's stem).
    pub plugin: String,
    /// When.
    pub time: DateTime<Utc>,
    /// What.
    #[serde(flatten)]
    pub change: PluginChange,
}

/// The changes of every plugin; see the module documentation.
#[derive(Debug)]
pub struct PluginHistory {
    /// Oldest first, per plugin as first named.
    kept: Mutex<BTreeMap<String, VecDeque<PluginEvent>>>,
    live: broadcast::Sender<PluginEvent>,
}

impl Default for PluginHistory {
    fn default() -> Self {
        Self {
            kept: Mutex::default(),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }
}

impl PluginHistory {
    /// Records `change` of `plugin` now, and tells the listeners.
    pub fn record(&self, plugin: &str, change: PluginChange) {
        let event = PluginEvent {
            plugin: plugin.to_owned(),
            time: Utc::now(),
            change,
        };
        {
            let mut kept = self.kept.lock();
            let key = kept
                .keys()
                .find(|name| same_name(name, plugin))
                .cloned()
                .unwrap_or_else(|| plugin.to_owned());
            let changes = kept.entry(key).or_default();
            if changes.len() == KEPT_PER_PLUGIN {
                changes.pop_front();
            }
            changes.push_back(event.clone());
        }
        // Nobody listening is fine.
        let _ = self.live.send(event);
    }

    /// The kept changes of `plugin` (`-` and `_` counting as one), oldest first.
    pub fn of(&self, plugin: &str) -> Vec<PluginEvent> {
        let kept = self.kept.lock();
        kept.iter()
            .find(|(name, _)| same_name(name, plugin))
            .map(|(_, changes)| changes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_kept_per_plugin_oldest_first_and_bounded() {
        let history = PluginHistory::default();
        let mut live = history.subscribe();
        history.record(
            "user-projection",
            PluginChange::Loaded {
                hash: "a".into(),
                version: "1".into(),
            },
        );
        history.record("other", PluginChange::Removed);
        for n in 0..KEPT_PER_PLUGIN {
            history.record(
                "user_projection",
                PluginChange::Refused {
                    reason: format!("bad {n}"),
                },
            );
        }
        let changes = history.of("user-projection");
        assert_eq!(changes.len(), KEPT_PER_PLUGIN);
        assert_eq!(
            changes[0].change,
            PluginChange::Refused {
                reason: "bad 0".into()
            },
            "the oldest was forgotten"
        );
        assert_eq!(history.of("other").len(), 1);
        assert!(history.of("nobody").is_empty());
        assert_eq!(live.try_recv().unwrap().plugin, "user-projection");
        let json = serde_json::to_value(&changes[1]).unwrap();
        assert_eq!(json["change"], "refused");
        assert_eq!(json["reason"], "bad 1");
    }
}
