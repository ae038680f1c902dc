//! The estimate a model was admitted with, as it crosses the control protocol: the
//! figures clients act on, typed, and the whole `inspect --json` report beside them.

use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::{bytes::ByteCount, wire};

/// Whether the estimate fits the budget (`inspect`'s verdict).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Fits,
    Tight,
    DoesNotFit,
}

impl Verdict {
    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Fits => "fits",
            Verdict::Tight => "tight",
            Verdict::DoesNotFit => "does_not_fit",
        }
    }
}

/// The estimate of `ControlEvent::Estimate`.
///
/// From control 1.5 it is a JSON object: the fields below, `report` being the full
/// `inspect --json` object. Below 1.5 it is, as it always was, that report as a JSON
/// string (postcard's layout of the old `Estimate { json: String }`), and the typed
/// fields are read from it on decode.
#[derive(Clone, Debug)]
pub struct Estimate {
    pub model: String,
    pub architecture: String,
    /// The context it was planned at (`kv_cache.context`).
    pub context: u64,
    pub total_bytes: ByteCount,
    pub budget_bytes: ByteCount,
    /// The weights' bytes in memory (`weights.bytes`).
    pub weights_bytes: ByteCount,
    pub verdict: Verdict,
    /// Whether the weights compute in f32 (`weights.compute_f32`).
    pub compute_f32: bool,
    /// The full report, as `inspect --json` prints it: a JSON object, kept as the text
    /// it arrived as (so that it is forwarded to an older peer byte for byte).
    pub report: Box<RawValue>,
}

impl PartialEq for Estimate {
    fn eq(&self, other: &Estimate) -> bool {
        self.typed(()) == other.typed(()) && self.report.get() == other.report.get()
    }
}

/// The JSON form (control 1.5 on).
#[derive(PartialEq, Serialize, Deserialize)]
struct Typed<R> {
    model: String,
    architecture: String,
    context: u64,
    total_bytes: ByteCount,
    budget_bytes: ByteCount,
    weights_bytes: ByteCount,
    verdict: Verdict,
    compute_f32: bool,
    report: R,
}

impl Estimate {
    /// Reads the typed figures from an `inspect --json` report (its JSON text); the
    /// error names the field that is missing or of the wrong type.
    pub fn from_report(json: String) -> Result<Estimate, String> {
        let raw =
            RawValue::from_string(json).map_err(|e| format!("the estimate is not JSON: {e}"))?;
        let Ok(serde_json::Value::Object(report)) = serde_json::from_str(raw.get()) else {
            return Err("the estimate is not a JSON object".into());
        };
        let at = |path: &[&str]| {
            let mut v = report.get(path[0]);
            for k in &path[1..] {
                v = v.and_then(|v| v.get(k));
            }
            v.ok_or_else(|| format!("the estimate has no `{}`", path.join(".")))
        };
        let num = |path: &[&str]| {
            at(path)?
                .as_u64()
                .ok_or_else(|| format!("the estimate's `{}` is not a number", path.join(".")))
        };
        let text = |path: &[&str]| {
            at(path)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("the estimate's `{}` is not a string", path.join(".")))
        };
        Ok(Estimate {
            model: text(&["model"])?,
            architecture: text(&["architecture"])?,
            context: num(&["kv_cache", "context"])?,
            total_bytes: ByteCount(num(&["total_bytes"])?),
            budget_bytes: ByteCount(num(&["budget_bytes"])?),
            weights_bytes: ByteCount(num(&["weights", "bytes"])?),
            verdict: serde_json::from_value(at(&["verdict"])?.clone())
                .map_err(|e| format!("the estimate's `verdict`: {e}"))?,
            compute_f32: at(&["weights", "compute_f32"])
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            report: raw,
        })
    }

    /// The typed figures, with `report` as the report part.
    fn typed<R>(&self, report: R) -> Typed<R> {
        Typed {
            model: self.model.clone(),
            architecture: self.architecture.clone(),
            context: self.context,
            total_bytes: self.total_bytes,
            budget_bytes: self.budget_bytes,
            weights_bytes: self.weights_bytes,
            verdict: self.verdict,
            compute_f32: self.compute_f32,
            report,
        }
    }
}

impl Serialize for Estimate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if wire::current().control < wire::CONTROL_JSON_SINCE {
            return s.serialize_str(self.report.get());
        }
        self.typed(&self.report).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Estimate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Estimate, D::Error> {
        if wire::current().control < wire::CONTROL_JSON_SINCE {
            let json = String::deserialize(d)?;
            return Estimate::from_report(json).map_err(D::Error::custom);
        }
        let t = Typed::<Box<RawValue>>::deserialize(d)?;
        Ok(Estimate {
            model: t.model,
            architecture: t.architecture,
            context: t.context,
            total_bytes: t.total_bytes,
            budget_bytes: t.budget_bytes,
            weights_bytes: t.weights_bytes,
            verdict: t.verdict,
            compute_f32: t.compute_f32,
            report: t.report,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;
    use crate::wire::{with, Wire};

    fn report(total: u64, budget: u64, weights: u64, context: u64, verdict: &str) -> String {
        format!(
            r#"{{"model":"/m","architecture":"llama","weights":{{"bytes":{weights},"compute_f32":true}},"kv_cache":{{"context":{context}}},"total_bytes":{total},"budget_bytes":{budget},"verdict":"{verdict}"}}"#
        )
    }

    proptest! {
        /// The typed figures are the report's; below control 1.5 the report crosses as
        /// the very text it was, from 1.5 as typed JSON; both read back equal.
        #[test]
        fn reads_the_report_and_crosses_every_minor(
            total in any::<u64>(), budget in any::<u64>(), weights in any::<u64>(),
            context in any::<u64>(), v in 0usize..3,
        ) {
            let verdict = ["fits", "tight", "does_not_fit"][v];
            let json = report(total, budget, weights, context, verdict);
            let e = Estimate::from_report(json.clone()).unwrap();
            prop_assert_eq!((e.total_bytes.get(), e.budget_bytes.get()), (total, budget));
            prop_assert_eq!((e.weights_bytes.get(), e.context), (weights, context));
            prop_assert_eq!(e.verdict.as_str(), verdict);
            prop_assert!(e.compute_f32);
            for minor in 0..=5 {
                let w = Wire::control(minor);
                let bytes = crate::frame::encode_at(&crate::control::FromDaemon::Event {
                    id: 1,
                    event: crate::control::ControlEvent::Estimate(Box::new(e.clone())),
                }, w).unwrap().unwrap();
                let back: crate::control::FromDaemon = crate::frame::decode_at(&bytes, w).unwrap();
                let crate::control::FromDaemon::Event {
                    event: crate::control::ControlEvent::Estimate(b), ..
                } = back else { panic!("{back:?}") };
                prop_assert_eq!(&*b, &e);
                if minor < 5 {
                    let s: String = with(w, || postcard::from_bytes::<(u8, u8, u8, String)>(&bytes)).unwrap().3;
                    prop_assert_eq!(s, json.clone());
                }
            }
        }

        /// Any text is read without a panic; what is not a report is an error.
        #[test]
        fn any_text_is_an_estimate_or_an_error(s in ".{0,64}") {
            let _ = Estimate::from_report(s);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = Estimate::from_report(r#"{"model":"m","architecture":"a"}"#.into()).unwrap_err();
        assert!(e.contains("kv_cache.context"), "{e}");
        let e = Estimate::from_report(report(1, 2, 3, 4, "roomy")).unwrap_err();
        assert!(e.contains("verdict"), "{e}");
        let e = Estimate::from_report("[1]".into()).unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
    }
}
