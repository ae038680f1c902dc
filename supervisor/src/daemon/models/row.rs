//! The model's row: its status as `ps` shows it, whether admission may evict it, and
//! its publication to the row's watchers and to subscribers.

use std::time::{Instant, SystemTime};

use protocol::control::{KeepAlive, ModelStatus};

use super::{Actor, Row, State};

impl Actor {
    /// Loaded, free, nothing queued, not pinned: admission may evict it.
    pub(super) fn evictable(&self) -> bool {
        matches!(&self.state, State::Loaded(l) if l.current.is_none())
            && self.queue.is_empty()
            && self.keep_alive != KeepAlive::Forever
    }

    pub(super) fn status(&self) -> ModelStatus {
        let live = self.state.live();
        let w = live.map(|l| l.status.borrow().clone());
        let plan = live.map(|l| &l.plan);
        let keep_alive_until_ms = live
            .filter(|l| l.current.is_none())
            .and_then(|l| l.keep_until)
            .map(|t| {
                let left = t.saturating_duration_since(Instant::now());
                (SystemTime::now() + left)
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            });
        ModelStatus {
            model: self.dir.display().to_string(),
            name: self.row.borrow().status.name.clone(),
            state: self.state.model_state(),
            pid: live.map(|l| l.worker.pid() as u32),
            footprint_bytes: w.as_ref().map_or(0, |w| w.footprint_bytes),
            peak_bytes: w
                .as_ref()
                .map_or(0, |w| w.max_footprint_bytes.max(w.mlx_peak_bytes)),
            estimate_bytes: plan.map_or(0, |p| p.estimate.total_bytes),
            context: plan.map_or(0, |p| p.estimate.kv_cache.context),
            keep_alive_until_ms,
            pinned: self.keep_alive == KeepAlive::Forever,
            requests: self.requests,
            queued: self.queue.len() as u32,
            last_failure: self.last_failure.clone(),
            note: self.note.clone(),
            device: live.map(|l| l.device.clone()),
            prefix_cache_bytes: live.map_or(0, |l| l.prefix.bytes),
            prefix_cache_limit_bytes: plan.map_or(0, |p| p.load.prefix_cache),
            prefix_cache_hit_rate: live
                .filter(|l| l.plan.load.prefix_cache > 0)
                .and_then(|l| l.prefix.hit_rate()),
        }
    }

    /// Publishes the row; a state change also goes to subscribers.
    pub(super) fn publish(&mut self) {
        let status = self.status();
        let held_bytes = if matches!(self.state, State::Loaded(_) | State::Loading { .. }) {
            // The prefix cache may grow to its bound beside the estimate.
            status
                .footprint_bytes
                .max(status.estimate_bytes + status.prefix_cache_limit_bytes)
        } else {
            0
        };
        let key = (
            status.state,
            status.last_failure.as_ref().map(|f| f.kind),
            status.note.clone(),
        );
        if self.last_published.as_ref() != Some(&key) {
            self.last_published = Some(key);
            let _ = self.shared.changes.send(status.clone());
        }
        let row = Row {
            status,
            last_used: self.last_used,
            held_bytes,
            evictable: self.evictable(),
        };
        self.row.send_replace(row);
    }
}
