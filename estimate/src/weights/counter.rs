//! The byte counter the layouts add to: each tensor's bytes (quantized per the scheme
//! where it is a linear layer) go to one component of [`WeightParts`].

use super::WeightParts;
use crate::quantization::{LinearKind, Quantization};

/// Accumulates bytes per component.
pub(super) struct Counter<'a> {
    pub(super) quant: &'a Quantization,
    pub(super) dt: u64,
    pub(super) parts: WeightParts,
}

#[derive(Clone, Copy)]
pub(super) enum Part {
    Embedding,
    Layers,
    Head,
    Vision,
    Extra,
}

impl Counter<'_> {
    fn slot(&mut self, part: Part) -> &mut u64 {
        match part {
            Part::Embedding => &mut self.parts.embedding,
            Part::Layers => &mut self.parts.layers,
            Part::Head => &mut self.parts.lm_head,
            Part::Vision => &mut self.parts.vision,
            Part::Extra => &mut self.parts.extra,
        }
    }

    /// Unquantized elements (norms, biases, convolutions, position tables).
    pub(super) fn dense(&mut self, part: Part, elements: u64) {
        let b = elements.saturating_mul(self.dt);
        let slot = self.slot(part);
        *slot = slot.saturating_add(b);
    }

    /// A linear layer `[out, inp]`, quantized per the scheme, plus an optional bias.
    pub(super) fn linear(&mut self, part: Part, path: &str, out: u64, inp: u64, bias: bool) {
        let kind = match part {
            Part::Vision => LinearKind::Vision,
            Part::Head => LinearKind::Head,
            Part::Embedding => LinearKind::Embedding,
            _ => LinearKind::Layer,
        };
        let b = self.quant.linear_bytes(path, kind, out, inp, self.dt);
        let slot = self.slot(part);
        *slot = slot.saturating_add(b);
        if bias {
            self.dense(part, out);
        }
    }

    /// `count` MoE experts' linear layers `[out, inp]`.
    pub(super) fn experts(&mut self, part: Part, path: &str, count: u64, out: u64, inp: u64) {
        let b = count.saturating_mul(self.quant.linear_bytes(
            path,
            LinearKind::Expert,
            out,
            inp,
            self.dt,
        ));
        let slot = self.slot(part);
        *slot = slot.saturating_add(b);
    }
}
