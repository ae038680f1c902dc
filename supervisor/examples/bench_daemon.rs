//! `make bench`: what the daemon costs, measured on this machine with its own client
//! library — warm generation through the daemon vs `mlxsup run` (cold: spawn + load)
//! vs mlx-lm in-process, the daemon's own memory, how fast a worker's death shows, and
//! what an eviction adds to a load. Prints markdown.
//!
//! usage: bench_daemon MLXSUP MODEL TINY_A TINY_B PYTHON [ROUNDS]
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: a failure is a crash.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use protocol::{
    control::{ControlEvent, ControlReply, ControlRequest, GenerateModel, LoadModel, ModelState},
    daemon_client::DaemonClient,
    Device, Event, GenerateRequest, Prompt, Sampling,
};

const PROMPT: usize = 128;
const GEN: u32 = 64;

fn prompt_ids(n: usize, vocab: u32) -> Vec<u32> {
    // The same ids as scripts/bench_mlx_lm.py.
    let span = (vocab / 2).max(1) as usize;
    (0..n).map(|i| ((i * 7919 + 13) % span) as u32).collect()
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(mlxsup: &Path, extra: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("bd")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("r/mlxsup.sock");
        let child = Command::new(mlxsup)
            .arg("serve")
            .args(extra)
            .env("MLXSUP_RUNTIME_DIR", dir.path().join("r"))
            .env("MLXSUP_SOCKET", &socket)
            .env("MLXSUP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < until, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon {
            child,
            socket,
            _dir: dir,
        }
    }

    fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gen_request(
    model: &Path,
    prompt: Vec<u32>,
    max_tokens: u32,
    context: Option<u64>,
) -> ControlRequest {
    ControlRequest::Generate(GenerateModel {
        model: model.display().to_string(),
        request: GenerateRequest {
            prompt: Prompt::Tokens(prompt),
            max_tokens,
            sampling: Sampling::default(),
            stop: vec![],
            fault: None,
            images: Vec::new(),
        },
        context,
        keep_alive: None,
        force: false,
        device: Device::Default,
        compute: protocol::ComputePolicy::Auto,
        kv_bits: None,
    })
}

fn load_request(model: &Path, context: Option<u64>) -> ControlRequest {
    ControlRequest::Load(LoadModel {
        model: model.display().to_string(),
        context,
        keep_alive: None,
        force: true,
        fault: None,
        device: Device::Default,
        compute: protocol::ComputePolicy::Auto,
        kv_bits: None,
        prefix_cache: None,
    })
}

/// One warm generation through the daemon: (client TTFT s, worker TTFT s, gen tok/s, tokens).
async fn daemon_generate(c: &mut DaemonClient, model: &Path, vocab: u32) -> (f64, f64, f64, u32) {
    let t0 = Instant::now();
    let mut first = None;
    let reply = c
        .call(
            gen_request(model, prompt_ids(PROMPT, vocab), GEN, Some(2048)),
            |ev| {
                if let ControlEvent::Worker(Event::Token { .. }) = ev {
                    first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                }
            },
        )
        .await
        .unwrap();
    let ControlReply::Done(d) = reply else {
        panic!("generate: {reply:?}")
    };
    let worker_ttft = d.done.prompt_tokens as f64 / d.done.prompt_tps;
    (
        first.unwrap(),
        worker_ttft,
        d.done.generation_tps,
        d.done.generated_tokens,
    )
}

/// `mlxsup run` on the same prompt: (TTFT from the command's start s, gen tok/s).
fn run_cold(mlxsup: &Path, model: &Path, vocab: u32) -> (f64, f64) {
    let ids: Vec<String> = prompt_ids(PROMPT, vocab)
        .iter()
        .map(|i| i.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("p");
    // `run` takes text; the token ids above are for the daemon and mlx-lm. Use a text
    // prompt of the same length in tokens for the cold path (it is timed end to end).
    std::fs::write(&prompt, ids.join(" ")).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(mlxsup)
        .args(["run"])
        .arg(model)
        .args([
            "--json",
            "--max-tokens",
            &GEN.to_string(),
            "--context",
            "2048",
            "--prompt-file",
        ])
        .arg(&prompt)
        .env("MLXSUP_RUNTIME_DIR", dir.path().join("r"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut first = None;
    let mut gen_tps = 0.0;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap_or_default();
        if v["event"] == "token" {
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        }
        if v["event"] == "done" {
            gen_tps = v["generation_tps"].as_f64().unwrap_or(0.0);
        }
    }
    child.wait().unwrap();
    (first.unwrap_or(f64::NAN), gen_tps)
}

/// mlx-lm in-process (warm, as scripts/bench_mlx_lm.py measures): (TTFT s, gen tok/s).
fn mlx_lm(python: &Path, model: &Path) -> (f64, f64) {
    let out = Command::new(python)
        .args(["scripts/bench_mlx_lm.py"])
        .arg(model)
        .args([
            "--prompt",
            &PROMPT.to_string(),
            "--gen",
            &GEN.to_string(),
            "--runs",
            "1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    (
        PROMPT as f64 / v["prompt_tps"].as_f64().unwrap(),
        v["generation_tps"].as_f64().unwrap(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn vocab_of(model: &Path) -> u32 {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"].as_u64().unwrap() as u32
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mlxsup, model, tiny_a, tiny_b, python, rest @ ..] = args.as_slice() else {
        panic!("usage: bench_daemon MLXSUP MODEL TINY_A TINY_B PYTHON [ROUNDS]");
    };
    let rounds: usize = rest.first().map_or(5, |r| r.parse().unwrap());
    let (mlxsup, model) = (Path::new(mlxsup), std::fs::canonicalize(model).unwrap());
    let (tiny_a, tiny_b) = (
        std::fs::canonicalize(tiny_a).unwrap(),
        std::fs::canonicalize(tiny_b).unwrap(),
    );
    let vocab = vocab_of(&model);

    // 1. Warm generation: daemon vs run vs mlx-lm, interleaved round by round.
    let d = Daemon::start(mlxsup, &[]);
    let idle_rss = d.rss();
    let mut c = DaemonClient::connect(&d.socket).await.unwrap();
    daemon_generate(&mut c, &model, vocab).await; // load + warm-up
    let (mut dt, mut dw, mut dg, mut rt, mut rg, mut mt, mut mg) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut tokens = 0;
    for _ in 0..rounds {
        let (t, w, g, n) = daemon_generate(&mut c, &model, vocab).await;
        dt.push(t);
        dw.push(w);
        dg.push(g);
        tokens = n;
        let (t, g) = run_cold(mlxsup, &model, vocab);
        rt.push(t);
        rg.push(g);
        let (t, g) = mlx_lm(Path::new(python), &model);
        mt.push(t);
        mg.push(g);
    }
    let overhead: Vec<f64> = dt.iter().zip(&dw).map(|(c, w)| (c - w) * 1e3).collect();
    println!("#### Warm generation through the daemon vs `mlxsup run` vs mlx-lm ({PROMPT}-token prompt, {GEN} generated, median of {rounds}, interleaved)\n");
    println!("| path | time to first token | generation tok/s |");
    println!("|---|---:|---:|");
    println!(
        "| `mlxsup generate` (daemon, warm worker; measured by the client) | {:.1} ms | {:.2} |",
        median(dt.clone()) * 1e3,
        median(dg.clone())
    );
    println!(
        "| `mlxsup run` (cold: spawn + load + prefill; text prompt) | {:.1} ms | {:.2} |",
        median(rt) * 1e3,
        median(rg)
    );
    println!(
        "| mlx-lm 0.32.2 in-process (warm) | {:.1} ms | {:.2} |",
        median(mt) * 1e3,
        median(mg.clone())
    );
    println!(
        "\nWhat the daemon adds to the first token (client's time to first token − the worker's own): median {:.2} ms, max {:.2} ms. Generated {tokens} tokens per run; daemon/mlx-lm generation ratio {:.2}×.\n",
        median(overhead.clone()),
        overhead.iter().cloned().fold(0.0, f64::max),
        median(dg) / median(mg),
    );

    // 2. The daemon's own memory.
    c.call(gen_request(&tiny_a, vec![1, 2, 3], 2, Some(512)), |_| {})
        .await
        .unwrap();
    let two_rss = {
        c.call(gen_request(&tiny_b, vec![1, 2, 3], 2, Some(512)), |_| {})
            .await
            .unwrap();
        d.rss()
    };
    println!(
        "#### The daemon's own memory (RSS of `mlxsup serve`, workers are separate processes)\n"
    );
    println!("| models loaded | daemon RSS |\n|---|---:|");
    println!("| 0 | {:.1} MiB |", idle_rss as f64 / 1048576.0);
    println!(
        "| 3 (the model above + 2 tiny ones) | {:.1} MiB |\n",
        two_rss as f64 / 1048576.0
    );
    drop(c);
    drop(d);

    // 3. A worker's death → the failed state on a Subscribe stream.
    let d = Daemon::start(mlxsup, &[]);
    let mut sub = DaemonClient::connect(&d.socket).await.unwrap();
    let mut ctl = DaemonClient::connect(&d.socket).await.unwrap();
    let sid = sub.send(ControlRequest::Subscribe).await.unwrap();
    let mut lat = Vec::new();
    for _ in 0..20 {
        let r = ctl
            .call(load_request(&tiny_a, Some(512)), |_| {})
            .await
            .unwrap();
        let ControlReply::Loaded(s) = r else {
            panic!("load: {r:?}")
        };
        let pid = s.pid.unwrap() as i32;
        // Drain what the load published.
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {}
        let t0 = Instant::now();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        loop {
            let (id, m) = sub.next().await.unwrap();
            if let (true, Err(ControlEvent::Model(m))) = (id == sid, m) {
                if m.state == ModelState::Failed {
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    break;
                }
            }
        }
    }
    println!("#### A worker SIGKILLed while idle → `failed` on a Subscribe stream (20 kills)\n");
    println!(
        "median {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
        median(lat.clone()),
        percentile(lat.clone(), 0.99),
        lat.iter().cloned().fold(0.0, f64::max)
    );
    drop(d);

    // 4. Evict + load vs a plain load: a budget with room for one tiny model at 32k.
    let one = {
        let out = Command::new(mlxsup)
            .args(["inspect"])
            .arg(&tiny_a)
            .args(["--json", "--context", "32768"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["total_bytes"].as_u64().unwrap()
    };
    let d = Daemon::start(mlxsup, &["--budget", &(one * 3 / 2).to_string()]);
    let mut c = DaemonClient::connect(&d.socket).await.unwrap();
    let (mut plain, mut evict) = (vec![], vec![]);
    for _ in 0..5 {
        let _ = c
            .call(
                ControlRequest::Unload {
                    model: tiny_b.display().to_string(),
                },
                |_| {},
            )
            .await;
        let t = Instant::now();
        c.call(load_request(&tiny_a, Some(32768)), |_| {})
            .await
            .unwrap();
        plain.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let r = c
            .call(load_request(&tiny_b, Some(32768)), |_| {})
            .await
            .unwrap();
        assert!(matches!(r, ControlReply::Loaded(_)), "{r:?}");
        evict.push(t.elapsed().as_secs_f64() * 1e3);
        let _ = c
            .call(
                ControlRequest::Unload {
                    model: tiny_b.display().to_string(),
                },
                |_| {},
            )
            .await;
    }
    println!("#### Load with and without an eviction (tiny models, 5 each)\n");
    println!("| load | median |\n|---|---:|");
    println!("| nothing to evict | {:.1} ms |", median(plain));
    println!(
        "| evicting the LRU idle model first | {:.1} ms |",
        median(evict)
    );
}
