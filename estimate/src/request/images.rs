//! The images' part of an estimate request: the one image size planned (what the
//! processor makes of it) and the advice when images do not fit (how many do, at what
//! size all of them do).

use super::{totals, Model, Request};

/// One image as planned, when images are asked for on a model with a vision tower (a
/// size the processor refuses falls back to the default size; `estimate` warns).
pub(super) fn image_plan(model: &Model, req: &Request) -> Option<crate::vision::ImagePlan> {
    let v = model.vision.as_ref().filter(|_| req.images > 0)?;
    crate::vision::plan_image(v, req.image_size)
        .or_else(|_| crate::vision::plan_image(v, None))
        .ok()
}

/// With images that do not fit: how many do at this size, and at what size all of them
/// do (the same aspect, the longest side cut); `None` when even the text alone does not
/// fit or the model has no vision tower.
pub(super) fn image_advice(
    model: &Model,
    req: &Request,
    weights: u64,
    context: u64,
    limit: u64,
) -> Option<String> {
    model.vision.as_ref().filter(|_| req.images > 0)?;
    let fits = |r: &Request| totals(model, weights, context, r).total <= limit;
    let with = |images: u64, image_size: Option<(u32, u32)>| Request {
        images,
        image_size,
        ..req.clone()
    };
    if !fits(&with(0, None)) {
        return None;
    }
    let (w, h) = req.image_size.unwrap_or(crate::vision::DEFAULT_IMAGE_SIZE);
    let mut parts = Vec::new();
    if req.images > 1 {
        let n =
            crate::activation::largest_fitting(req.images - 1, |n| fits(&with(n, req.image_size)))
                .filter(|&n| fits(&with(n, req.image_size)));
        match n {
            Some(n) => parts.push(format!("{n} of the {} images fit at {w}x{h}", req.images)),
            None => parts.push(format!("not one image fits at {w}x{h}")),
        }
    }
    let long = w.max(h);
    let scaled = |l: u64| {
        let l = l as u32;
        let sw = (u64::from(w) * u64::from(l) / u64::from(long)).max(1) as u32;
        let sh = (u64::from(h) * u64::from(l) / u64::from(long)).max(1) as u32;
        (sw, sh)
    };
    if let Some(l) = crate::activation::largest_fitting(u64::from(long), |l| {
        fits(&with(req.images, Some(scaled(l))))
    })
    .filter(|&l| l >= 28 && fits(&with(req.images, Some(scaled(l)))))
    {
        let (sw, sh) = scaled(l);
        parts.push(format!(
            "all {} fit at {sw}x{sh} (--image-size {sw}x{sh})",
            req.images
        ));
    }
    Some(format!("; images: {}", parts.join(", ")))
}
