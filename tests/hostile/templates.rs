//! Chat templates that never end (f), never compile or recurse without end: refused by
//! the preflight, naming the template.
use std::path::Path;

use serde_json::json;

use super::*;

// --- (f) templates that never end --------------------------------------------------------

pub(crate) fn template(m: &Path, t: &str) {
    edit_json(&m.join("tokenizer_config.json"), |c| {
        c["chat_template"] = json!(t)
    });
}

case!(template_nested_range_loops, |m| {
    template(
        m,
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    );
    run_refused(
        m,
        &["--chat"],
        5,
        "tokenizer_config.json: cannot render the chat template",
    );
});
case!(template_endless_output, |m| {
    template(
        m,
        "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    );
    run_refused(m, &["--chat"], 5, "the rendered prompt passed");
});
case!(template_does_not_compile, |m| {
    template(m, "{% for %}");
    run_refused(m, &["--chat"], 5, "the chat template does not compile");
});
case!(template_jinja_does_not_compile, |m| {
    edit_json(&m.join("tokenizer_config.json"), |t| {
        t.as_object_mut().unwrap().remove("chat_template");
    });
    std::fs::write(m.join("chat_template.jinja"), "{{ }").unwrap();
    run_refused(
        m,
        &["--chat"],
        5,
        "chat_template.jinja: the chat template does not compile",
    );
});
case!(template_deep_recursion, |m| {
    template(m, "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    run_refused(m, &["--chat"], 5, "recursion limit exceeded");
});
