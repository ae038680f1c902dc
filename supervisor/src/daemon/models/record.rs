//! A finished generation's estimate at the context it used, and its record in the
//! calibration store.

use super::{super::admission, Live};

impl Live {
    /// The estimate at the context a generation used, and its record in the calibration
    /// store (written off the actor's thread).
    pub(super) fn record_run(
        &mut self,
        done: &protocol::DoneInfo,
        images: &[protocol::ImageInput],
        vision: Option<&protocol::VisionPeak>,
    ) -> (u64, u64) {
        let (l, plan) = (&self.loadable, &self.plan);
        let est = &plan.estimate;
        let req = admission::loaded_request(plan, images);
        let used = crate::plan::used_estimate(&l.model, &req, done, est.weights.compute_f32);
        let answer = (used.kv_cache.context, used.total_bytes);
        // A run with images is recorded with its tower's measurement (none came: not
        // recorded, its peak cannot be told apart).
        // A text request that did not raise the worker's peak (an earlier one, or the load,
        // set it) measured nothing of its own: not recorded (as in `run`, the first after a
        // load is; the store tells a load-transient peak apart).
        let raised = self.recorded_peak.is_none_or(|p| done.peak_bytes > p);
        self.recorded_peak = Some(self.recorded_peak.unwrap_or(0).max(done.peak_bytes));
        if let (machine, Some(store), true) = (
            self.machine.clone(),
            crate::calibration::Store::default_store(),
            // A tower's own peak is measured around it: valid whatever the worker's.
            (raised && images.is_empty()) || vision.is_some(),
        ) {
            let (model, peak, vision) = (l.model.clone(), done.peak_bytes, vision.cloned());
            tokio::task::spawn_blocking(move || {
                let warnings = crate::calibration::record(
                    Some(&store),
                    machine,
                    &model,
                    &used,
                    peak,
                    vision.as_ref(),
                    "daemon",
                );
                for w in warnings {
                    tracing::warn!("{w}");
                }
            });
        }
        answer
    }
}
