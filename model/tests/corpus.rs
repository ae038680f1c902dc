//! The 55-checkpoint corpus (`estimate/tests/fixtures/models`, published configs) read
//! through the one description: every config describes, each to its expected family
//! and layer plan, and the worker builds exactly the families it runs.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::PathBuf;

use model::{Description, LayerKind};
use serde_json::Value;

fn corpus() -> Vec<(String, Description)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../estimate/tests/fixtures/models");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let path = dir.join("config.json");
        if !path.exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let Value::Object(root) = v else {
            panic!("{name}: not an object")
        };
        let d = Description::new(root).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name, d));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The plan in short: `F` full, `S<window>` sliding, `L` linear, `C` convolution, runs
/// of one kind counted (`F×32`, `S1024×5 F`).
fn plan(d: &Description) -> String {
    let mut runs: Vec<(String, usize)> = Vec::new();
    for k in d.kinds() {
        let s = match k {
            LayerKind::Full => "F".to_string(),
            LayerKind::Sliding { window } => format!("S{window}"),
            LayerKind::Linear => "L".to_string(),
            LayerKind::Conv => "C".to_string(),
        };
        match runs.last_mut() {
            Some((last, n)) if *last == s => *n += 1,
            _ => runs.push((s, 1)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .map(|(s, n)| {
            if *n == 1 {
                s.clone()
            } else {
                format!("{s}×{n}")
            }
        })
        .collect();
    let mut out = parts.join(" ");
    if out.len() > 60 {
        out.truncate(60);
    }
    out
}

/// Per checkpoint: family, whether the worker runs it, the layer plan in short.
const EXPECTED: &[(&str, &str, bool, &str)] = &[
    ("ByteDance-Seed__UI-TARS-1.5-7B", "Qwen25Vl", true, "F×28"),
    (
        "Devarsh-19__Mistral-7B-Instruct-v0.1-fp16-resave",
        "Mistral",
        true,
        "S4096×32",
    ),
    (
        "FlagAlpha__Llama3-Chinese-8B-Instruct",
        "Llama",
        true,
        "F×32",
    ),
    ("HuggingFaceTB__SmolLM3-3B", "SmolLm3", true, "F×36"),
    (
        "LiquidAI__LFM2-1.2B",
        "Lfm2",
        false,
        "C×2 F C×2 F C×2 F C F C F C F C",
    ),
    ("Qwen__Qwen-72B", "Qwen", true, "F×80"),
    ("Qwen__Qwen2.5-Coder-32B-Instruct", "Qwen2", true, "F×64"),
    ("Qwen__Qwen2.5-Math-72B-Instruct", "Qwen2", true, "F×80"),
    ("Qwen__Qwen2.5-VL-7B-Instruct", "Qwen25Vl", true, "F×28"),
    ("SakuraLLM__Sakura-14B-Qwen2.5-v1.0", "Qwen2", true, "F×48"),
    ("XS-Wu__Qwen2.5-3B-finetune", "Qwen2", true, "F×36"),
    ("XiaomiMiMo__MiMo-7B", "Mimo", true, "F×36"),
    (
        "YouriLalain__1PARAMMYL-8B-ModelStock",
        "Llama",
        true,
        "F×32",
    ),
    ("YouriLalain__3PRYMMAL-PHI3-3B-SLERP", "Phi3", true, "F×32"),
    (
        "Youssofal__Qwen3.8-27B-MTPLX-Optimized-Speed",
        "Qwen35",
        false,
        "L×3 F L×3 F L×3 F L×3 F L×3 F L×3 F L×3 F L×3 F L×3",
    ),
    ("allenai__olmOCR-7B-0225-preview", "Qwen2Vl", true, "F×28"),
    (
        "bryce-hoehn__Qwen3.5-18B-REAP-A3B-Coding",
        "Qwen35",
        false,
        "L×3 F L×3 F L×3 F L×3 F L×3 F L×3 F L×3 F L×3 F L×3",
    ),
    (
        "chuanli11__Llama-3.2-3B-Instruct-uncensored",
        "Llama",
        true,
        "F×28",
    ),
    (
        "cognitivecomputations__dolphin-2.5-mixtral-8x7b",
        "Mixtral",
        true,
        "F×32",
    ),
    (
        "cyankiwi__gemma-4-26B-A4B-it-AWQ",
        "Gemma4",
        false,
        "S1024×5 F S1024×5 F S1024×5 F S1024×5 F S1024×5 F",
    ),
    (
        "deepcogito__cogito-v1-preview-qwen-14B",
        "Qwen2",
        true,
        "F×48",
    ),
    ("deepseek-ai__DeepSeek-OCR-2", "DeepseekVlV2", false, "F×12"),
    ("deepseek-ai__DeepSeek-R1", "DeepseekV3", false, "F×61"),
    (
        "gghfez__gemma-3-4b-novision",
        "Gemma3Text",
        true,
        "S1024×5 F S1024×5 F S1024×5 F S1024×5 F S1024×5 F S1024",
    ),
    ("google__gemma-2b-it", "Gemma", true, "F×18"),
    (
        "google__gemma-4-31B-it",
        "Gemma4",
        false,
        "S1024×5 F S1024×5 F S1024×5 F S1024×5 F S1024×5 F S1024",
    ),
    (
        "google__medgemma-27b-it",
        "Gemma3",
        true,
        "S1024×5 F S1024×5 F S1024×5 F S1024×5 F S1024×5 F S1024",
    ),
    (
        "gopu-inc__Qwen2.5-0.5B-class-fp16-resave",
        "Qwen2",
        true,
        "F×24",
    ),
    (
        "ibm-granite__granite-3.1-1b-a400m-instruct",
        "GraniteMoe",
        true,
        "F×24",
    ),
    (
        "jeevanchaps__Meta-Llama3.1-8B-Instruct-bnb8bit",
        "Llama",
        true,
        "F×32",
    ),
    ("lizpreciatior__lzlv_70b_fp16_hf", "Llama", true, "F×80"),
    (
        "lmstudio-community__Qwen3-1.7B-MLX-bf16",
        "Qwen3",
        true,
        "F×28",
    ),
    (
        "lmstudio-community__Qwen3-14B-MLX-4bit",
        "Qwen3",
        true,
        "F×40",
    ),
    (
        "mattshumer__Reflection-Llama-3.1-70B",
        "Llama",
        true,
        "F×80",
    ),
    ("meta-llama__Llama-2-70b-chat-hf", "Llama", true, "F×80"),
    ("meta-llama__Llama-3.2-1B", "Llama", true, "F×16"),
    ("meta-llama__Llama-3.2-3B-Instruct", "Llama", true, "F×28"),
    (
        "meta-llama__Llama-3.2-3B__per-tensor-reshard",
        "Llama",
        true,
        "F×28",
    ),
    ("meta-llama__Meta-Llama-3-8B", "Llama", true, "F×32"),
    ("microsoft__Phi-3-mini-128k-instruct", "Phi3", true, "F×32"),
    ("microsoft__WizardLM-2-8x22B", "Mixtral", true, "F×56"),
    ("microsoft__phi-4", "Phi3", true, "F×40"),
    ("mistralai__Devstral-Small-2507", "Mistral", true, "F×40"),
    (
        "mistralai__Mistral-7B-Instruct-v0.2",
        "Mistral",
        true,
        "F×32",
    ),
    (
        "mistralai__Mistral-7B-Instruct-v0.3",
        "Mistral",
        true,
        "F×32",
    ),
    (
        "mistralai__Mixtral-8x7B-Instruct-v0.1",
        "Mixtral",
        true,
        "F×32",
    ),
    (
        "mlx-convert__Qwen2.5-7B-Instruct-MLX-bf16",
        "Qwen2",
        true,
        "F×28",
    ),
    (
        "mlx-convert__Qwen2.5-Coder-3B-Instruct-MLX-4bit",
        "Qwen2",
        true,
        "F×36",
    ),
    (
        "mlx-convert__Qwen2.5-Coder-3B-Instruct-MLX-8bit",
        "Qwen2",
        true,
        "F×36",
    ),
    (
        "mlx-convert__Qwen3-8B-heretic-MLX-4bit",
        "Qwen3",
        true,
        "F×36",
    ),
    (
        "mlx-fuse__Qwen1.5-0.5B-Chat-LoRA-fused",
        "Qwen2",
        true,
        "F×24",
    ),
    ("nvidia__Cosmos-Reason2-8B", "Qwen3Vl", false, "F×36"),
    (
        "openai__gpt-oss-20b",
        "GptOss",
        false,
        "S128 F S128 F S128 F S128 F S128 F S128 F S128 F S128 F S128",
    ),
    ("openbmb__MiniCPM-Llama3-V-2_5", "MiniCpmV", false, "F×32"),
    ("tiiuae__falcon-180B-chat", "Falcon", false, "F×80"),
    (
        "xiilab__SmolLM2-135M-KoAlpaca-finetune",
        "Llama",
        true,
        "F×30",
    ),
];

#[test]
fn every_checkpoint_describes_as_expected() {
    let corpus = corpus();
    assert_eq!(corpus.len(), EXPECTED.len(), "checkpoints added or removed");
    for ((name, d), (e_name, family, runs, layers)) in corpus.iter().zip(EXPECTED) {
        assert_eq!(name, e_name);
        assert_eq!(format!("{:?}", d.family), *family, "{name}");
        assert_eq!(d.worker_runs(), *runs, "{name}");
        assert_eq!(plan(d), *layers, "{name}");
        assert_eq!(d.layers.len() as u64, d.dims.layers, "{name}");
    }
}

/// The worker builds a config from every checkpoint whose family it runs — exactly the
/// `model_type`s it ran before the description existed, and issue 24's — and refuses the
/// others by name with the list it runs.
#[test]
fn the_worker_runs_exactly_its_families() {
    const BEFORE: &[&str] = &[
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gemma3",
        "phi3",
        "mixtral",
        "qwen3_moe",
        "qwen2_5_vl",
        "qwen2_vl",
        // Issue 24.
        "smollm3",
        "mimo",
        "qwen",
        "granitemoe",
    ];
    assert_eq!(model::SUPPORTED, BEFORE);
    let mut ran = 0;
    for (name, d) in corpus() {
        assert_eq!(
            d.worker_runs(),
            BEFORE.contains(&d.model_type.as_str()),
            "{name}"
        );
        match d.run_config(&name) {
            Ok(c) => {
                assert!(d.worker_runs(), "{name}");
                ran += 1;
                // The worker's per-layer plan is the description's.
                let sliding: Vec<bool> = d.layers.iter().map(|l| l.window().is_some()).collect();
                assert_eq!(c.sliding_layers, sliding, "{name}");
                assert_eq!(
                    c.sliding_window.map(|w| w as u64),
                    d.layers.iter().find_map(|l| l.window()),
                    "{name}"
                );
                for l in &d.layers {
                    assert_eq!(l.head_dim, c.head_dim as u64, "{name}");
                    assert_eq!(l.kv_heads, c.num_kv_heads as u64, "{name}");
                }
            }
            Err(e) => {
                assert!(!d.worker_runs(), "{name}: {e}");
                assert!(e.message.contains(&format!("{:?}", d.model_type)), "{e}");
                assert!(e.message.contains("gemma3_text, gemma3, phi3"), "{e}");
                assert!(d.unsupported().is_some());
            }
        }
    }
    assert_eq!(ran, EXPECTED.iter().filter(|e| e.2).count());
}

/// Gemma 4's global layers have heads of their own; the sliding ones the model's.
#[test]
fn gemma4_global_layers_have_their_own_heads() {
    let corpus = corpus();
    let (_, d) = corpus
        .iter()
        .find(|(n, _)| n == "google__gemma-4-31B-it")
        .unwrap();
    let global = d.layers.iter().find(|l| l.kind == LayerKind::Full).unwrap();
    let local = d.layers.iter().find(|l| l.window().is_some()).unwrap();
    let v = d.view();
    assert_eq!(Some(global.head_dim), v.u64(&["global_head_dim"]));
    assert_eq!(
        (local.head_dim, local.kv_heads),
        (d.dims.head_dim, d.dims.kv_heads)
    );
    assert_ne!(global.head_dim, local.head_dim);
}

#[test]
#[ignore = "prints the table `every_checkpoint_describes_as_expected` pins"]
fn print_the_corpus() {
    for (name, d) in corpus() {
        println!(
            "    (\"{name}\", \"{:?}\", {}, \"{}\"),",
            d.family,
            d.worker_runs(),
            plan(&d)
        );
    }
}
