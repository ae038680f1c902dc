//! The calibration store (issue 12): every successful run records, per machine, backend
//! and MLX version, the model's shape facts, dtype, context, prefill chunk, predicted and
//! measured peak; the preflight refits the activation coefficients from the records of
//! this machine and backend (`estimate::calibration::refit`) and never predicts below a
//! peak measured for the same shape (the floor).
pub mod record;
pub mod store;

use estimate::{
    calibration::{median, predicted_peak, refit, relative_error, FloorPoint},
    vision_activation::refit_vision,
    Calibration, CalibrationSource, Estimate, Model,
};
use protocol::{Device, LoadInfo};

pub use record::{Machine, ModelFacts, Record, VisionRecord};
pub use store::Store;

/// The backend a model on `device` runs on, as the preflight plans it (the worker
/// reports the real one in `loaded`).
pub fn planned_backend(device: Device) -> &'static str {
    if crate::compute::runs_on_cpu(device) {
        "cpu"
    } else if cfg!(target_os = "macos") {
        "metal"
    } else {
        "cuda"
    }
}

/// This machine's name.
pub fn host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Where a run ran, from its `loaded` reply.
pub fn machine_of(info: &LoadInfo) -> Machine {
    Machine {
        host: host(),
        backend: info.backend.clone(),
        mlx_version: info.mlx_version.clone(),
    }
}

/// The calibration for `model` on `backend`: the store's records of this machine and
/// backend refit, with the floor of this model's own records; built-in without any.
/// Warnings are for a person (a store set aside).
pub fn calibration(
    store: Option<&Store>,
    model: &Model,
    backend: &str,
) -> (Calibration, Vec<String>) {
    let Some(store) = store else {
        return (Calibration::default(), Vec::new());
    };
    let (records, warnings) = store.load();
    (
        calibration_from(&records, &ModelFacts::of(model), &host(), backend),
        warnings,
    )
}

/// [`calibration`] from records already read.
pub fn calibration_from(
    records: &[Record],
    facts: &ModelFacts,
    host: &str,
    backend: &str,
) -> Calibration {
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.machine.host == host
                && r.machine.backend == backend
                && r.peak_bytes > 0
                && r.kv_bits.is_none()
        })
        .collect();
    if mine.is_empty() {
        return Calibration::default();
    }
    // A peak set by the f32 load transient says nothing of the activations: kept for
    // the floor, not fitted. A run with images fits the vision term only (its peak may
    // be the tower's).
    let samples: Vec<_> = mine
        .iter()
        .filter(|r| r.measures_activations() && r.vision.is_none())
        .map(|r| r.sample())
        .collect();
    let vision: Vec<_> = mine.iter().filter_map(|r| r.vision_sample()).collect();
    let mut model = refit(&estimate::activation::BUILTIN, &samples);
    model.vision = refit_vision(&estimate::activation::BUILTIN.vision, &vision);
    let errors: Vec<f64> = samples
        .iter()
        .map(|s| relative_error(predicted_peak(&model, s), s.peak_bytes))
        .collect();
    let mlx = mine
        .iter()
        .max_by_key(|r| r.unix_time)
        .map_or(String::new(), |r| r.machine.mlx_version.clone());
    let floor = mine
        .iter()
        .filter(|r| &r.model == facts && r.vision.is_none())
        .map(|r| FloorPoint {
            elem_bytes: r.elem_bytes,
            context: r.context,
            chunk: r.chunk,
            peak_bytes: r.peak_bytes,
        })
        .collect();
    Calibration {
        model,
        source: CalibrationSource::Machine,
        description: format!(
            "this machine: {} run{}, {backend}, MLX {mlx}, median error {:+.1}%",
            mine.len(),
            if mine.len() == 1 { "" } else { "s" },
            median(&errors) * 100.0
        ),
        floor,
    }
}

/// Records a successful run of `model` whose estimate at the context it used is `used`,
/// with its vision tower's measurement for a run with images; warnings for a person (a
/// store set aside, a write that failed). Nothing without a store or a measured peak.
pub fn record(
    store: Option<&Store>,
    machine: Machine,
    model: &Model,
    used: &Estimate,
    peak_bytes: u64,
    vision: Option<&protocol::VisionPeak>,
    source: &str,
) -> Vec<String> {
    let Some(store) = store else {
        return Vec::new();
    };
    if peak_bytes == 0 {
        return Vec::new();
    }
    let mut record = Record::new(machine, model, used, peak_bytes, source);
    record.vision = vision.and_then(|v| VisionRecord::of(model, v));
    match store.append(record) {
        Ok(w) => w,
        Err(e) => vec![format!(
            "the run was not recorded in the calibration store: {e}"
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(hidden: u64) -> ModelFacts {
        ModelFacts {
            architecture: "llama".into(),
            layers: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            hidden,
            intermediate: 512,
            vocab: 1024,
            dtype: "BF16".into(),
            quantization: "none".into(),
            stored_weight_bytes: 5 << 20,
        }
    }

    fn rec(host: &str, backend: &str, hidden: u64, context: u64, peak: u64) -> Record {
        Record {
            machine: Machine {
                host: host.into(),
                backend: backend.into(),
                mlx_version: "0.32.2".into(),
            },
            model: facts(hidden),
            elem_bytes: 4,
            context,
            chunk: context.min(512),
            attended: 0,
            window: None,
            kv_bits: None,
            base_bytes: 10 << 20,
            weight_bytes: 8 << 20,
            load_transient_bytes: 0,
            predicted_bytes: 0,
            peak_bytes: peak,
            unix_time: 1,
            source: "run".into(),
            vision: None,
        }
    }

    #[test]
    fn only_this_machine_and_backend_count_and_the_floor_is_per_model() {
        let records = vec![
            rec("here", "cpu", 256, 1024, 90 << 20),
            rec("here", "metal", 256, 2048, 900 << 20),
            rec("elsewhere", "cpu", 256, 2048, 900 << 20),
            rec("here", "cpu", 512, 2048, 300 << 20),
        ];
        let none = calibration_from(&records, &facts(256), "nobody", "cpu");
        assert_eq!(none.source, CalibrationSource::Builtin);
        let c = calibration_from(&records, &facts(256), "here", "cpu");
        assert_eq!(c.source, CalibrationSource::Machine);
        assert!(c
            .description
            .starts_with("this machine: 2 runs, cpu, MLX 0.32.2, median error"));
        // The floor holds only this model's peak (hidden 256), not the other model's.
        assert_eq!(c.floor.len(), 1);
        assert_eq!(c.floor_bytes(4, 4096, 512), 90 << 20);
        let mut kv = rec("here", "cpu", 256, 4096, 999 << 20);
        kv.kv_bits = Some(8);
        let with_kv = [records.clone(), vec![kv]].concat();
        let c2 = calibration_from(&with_kv, &facts(256), "here", "cpu");
        assert_eq!(c2.floor_bytes(4, 8192, 512), 90 << 20);
    }

    /// An f32 run whose peak was its load transient is kept for the floor but not fitted:
    /// fitting it would read the transient as activations and raise every prediction.
    #[test]
    fn a_peak_set_by_the_f32_load_transient_is_not_fitted() {
        let run = rec("here", "cpu", 256, 1024, 30 << 20);
        let fitted = calibration_from(std::slice::from_ref(&run), &facts(256), "here", "cpu");
        let mut transient = rec("here", "cpu", 256, 1024, 30 << 20);
        transient.load_transient_bytes = 22 << 20;
        assert!(!transient.measures_activations());
        let c = calibration_from(&[transient], &facts(256), "here", "cpu");
        assert_eq!(c.model, estimate::activation::BUILTIN);
        assert_ne!(fitted.model, estimate::activation::BUILTIN);
        assert_eq!(c.floor_bytes(4, 1024, 1024), 30 << 20);
        // A peak well above weights + transient measured the run.
        let mut above = rec("here", "cpu", 256, 1024, 60 << 20);
        above.load_transient_bytes = 22 << 20;
        assert!(above.measures_activations());
    }

    /// A run with images fits the vision term only: its peak (maybe the tower's) is
    /// neither a text sample nor a floor, and its tower scales the vision coefficients.
    #[test]
    fn a_run_with_images_calibrates_the_vision_term_only() {
        let shape = estimate::vision_activation::TowerShape {
            heads: 16,
            hidden: 1024,
            intermediate: 2816,
            all_full_attention: false,
            values_per_patch: 1176,
        };
        let builtin = estimate::activation::BUILTIN;
        let predicted = builtin.vision.predict(&shape, 4, &[1024]);
        let mut r = rec("here", "cpu", 256, 1024, 900 << 20);
        r.vision = Some(VisionRecord {
            shape,
            patches: vec![1024],
            measured_bytes: predicted + predicted / 10,
            predicted_bytes: predicted,
        });
        let c = calibration_from(&[r], &facts(256), "here", "cpu");
        assert_eq!(c.source, CalibrationSource::Machine);
        assert!(c.floor.is_empty(), "{:?}", c.floor);
        assert_eq!(
            c.model.full, builtin.full,
            "the text terms are not fitted to it"
        );
        let now = c.model.vision.predict(&shape, 4, &[1024]);
        let want = predicted + predicted / 10;
        assert!(now.abs_diff(want) < want / 1000, "{now} vs {want}");
        assert_eq!(c.model.vision.half, builtin.vision.half);
    }
}
