//! Bad sampling and context arguments and index entries (h), and the controls: the
//! undamaged model runs with a real worker.
use std::path::Path;

use super::*;

// --- (h) arguments and index entries ---------------------------------------------------

case!(temp_negative, |m| {
    run_refused(m, &["--temp=-1"], 2, "is not a finite number >= 0");
});
case!(temp_negative_as_a_separate_argument, |m| {
    run_refused(
        m,
        &["--temp", "-1"],
        2,
        "temperature -1 is not a finite number >= 0",
    );
});
case!(top_p_negative, |m| {
    run_refused(m, &["--top-p", "-0.5"], 2, "top-p -0.5 is not in (0, 1]");
});
case!(temp_nan, |m| {
    run_refused(m, &["--temp", "NaN"], 2, "is not a finite number >= 0");
});
case!(temp_infinite, |m| {
    run_refused(m, &["--temp", "inf"], 2, "is not a finite number >= 0");
});
case!(top_p_two, |m| {
    run_refused(m, &["--top-p", "2"], 2, "is not in (0, 1]");
});
case!(top_p_zero, |m| {
    run_refused(m, &["--top-p", "0"], 2, "is not in (0, 1]");
});
case!(top_p_nan, |m| {
    run_refused(m, &["--top-p", "NaN"], 2, "is not in (0, 1]");
});
case!(prefill_chunk_zero, |m| {
    run_refused(m, &["--prefill-chunk", "0"], 2, "--prefill-chunk");
});
case!(context_zero, |m| {
    run_refused(m, &["--context", "0"], 2, "--context");
});
case!(context_u64_max_is_refused_not_overflowed, |m| {
    run_refused(m, &["--context", "18446744073709551615"], 3, "does not fit");
});
case!(index_entry_escaping_the_folder, |m| {
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"weight_map":{"model.embed_tokens.weight":"../../../../etc/passwd"}}"#,
    )
    .unwrap();
    inspect(
        m,
        5,
        "\"../../../../etc/passwd\", which is not a plain file name inside the model folder",
    );
});
case!(index_entry_absolute, |m| {
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"weight_map":{"a":"/etc/passwd"}}"#,
    )
    .unwrap();
    run_refused(m, &[], 5, "not a plain file name");
});
case!(index_total_size_negative, |m| {
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"metadata":{"total_size":-5},"weight_map":{"a":"model.safetensors"}}"#,
    )
    .unwrap();
    inspect(
        m,
        5,
        "`metadata.total_size` = -5 is outside the accepted range",
    );
});

// --- controls: the undamaged model works, with a real worker ---------------------------

case!(control_run, |m| {
    run_real(m, &[], 0, "generated");
});
case!(control_chat_run, |m| {
    run_real(
        m,
        &["--chat", "--temp", "0.7", "--top-p", "0.9", "--seed", "1"],
        0,
        "generated",
    );
});
case!(control_prompt_file, |m| {
    let p = m.parent().unwrap().join("prompt.txt");
    std::fs::write(&p, "Hello there").unwrap();
    run_real(m, &["--prompt-file", p.to_str().unwrap()], 0, "generated");
});
