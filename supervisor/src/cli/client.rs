//! The daemon's command-line clients: `status`, `ps`, `ls`, `load`, `unload`, `generate`
//! and `stop`. Thin: parse, call the daemon with the protocol's client library, print.
//! `generate` streams and exits like `run`.

use std::{path::PathBuf, time::Duration};

use estimate::Bytes;
use protocol::{
    control::{ControlEvent, ControlReply, ControlRequest, GenerateModel, KeepAlive, LoadModel},
    daemon_client::{ClientError, DaemonClient},
    ComputePolicy, Device, Failure, Fault,
};
use serde_json::{json, Value};

use crate::{cli::output::Output, cli::prompt::PromptArgs, cli::run, daemon, exit::Exit};

/// Where the daemon is, and the output form.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// The daemon's socket [default: MLXSUP_SOCKET, else the per-user default].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What a load or a generation asks of the model.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A model folder, or a name the daemon resolves (`mlxsup ls`).
    pub model: String,
    /// Context tokens to plan for, when the model is loaded.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub context: Option<u64>,
    /// How long it stays loaded after its last request (30s, 5m, 1h, 0, -1).
    #[arg(long, value_parser = daemon::parse_keep_alive, allow_hyphen_values = true)]
    pub keep_alive: Option<KeepAlive>,
    /// Load even when it does not fit; for a load, also clears a quarantine.
    #[arg(long)]
    pub force: bool,
    /// Tests: make the worker fail on purpose (KIND@PHASE; load's KIND@load).
    #[arg(long, hide = true, value_parser = crate::fault::parse_fault)]
    pub inject_fault: Option<Fault>,
    /// The MLX device to load on: gpu, cpu or default.
    #[arg(long, default_value = "default", value_parser = Device::parse)]
    pub device: Device,
    /// The compute dtype on the CPU: auto (f32 when it fits the budget), native or f32.
    #[arg(long, default_value = "auto", value_parser = ComputePolicy::parse)]
    pub compute: ComputePolicy,
    /// Quantize the KV cache to 4 or 8 bits (group size 64), when it loads.
    #[arg(long, value_parser = crate::cli::inspect::parse_kv_bits)]
    pub kv_bits: Option<u8>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Bytes its prefix cache may hold (the KV of finished generations, reused by prompts
    /// sharing their prefix), or `off` [default: the daemon's `--prefix-cache`].
    #[arg(long, value_name = "BYTES|off", value_parser = crate::plan::parse_prefix_cache)]
    pub prefix_cache: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Args, Clone, Debug)]
pub struct UnloadArgs {
    pub model: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// An image for a vision-language model (repeatable), as `run --image`: read and
    /// resized here, with the model folder's processor settings.
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn block_on(f: impl std::future::Future<Output = Exit>) -> Exit {
    crate::rt::block_on(f)
}

/// Connects, or says in one line that no daemon answers.
async fn connect(args: &ClientArgs) -> Result<DaemonClient, Exit> {
    let socket = daemon::socket_path(args.socket.as_deref());
    match DaemonClient::connect(&socket).await {
        Ok(c) => Ok(c),
        Err(ClientError::NotRunning { .. }) => {
            eprintln!(
                "mlxsup: no daemon is running at {}: start one with `mlxsup serve` (or `mlxsup service install`)",
                socket.display()
            );
            Err(Exit::Internal)
        }
        Err(e) => {
            eprintln!("mlxsup: {e}");
            Err(Exit::Internal)
        }
    }
}

/// One request, its reply (events ignored).
pub(crate) async fn ask(args: &ClientArgs, body: ControlRequest) -> Result<ControlReply, Exit> {
    let mut client = connect(args).await?;
    client.call(body, |_| {}).await.map_err(|e| {
        eprintln!("mlxsup: {e}");
        Exit::Internal
    })
}

fn print_json(v: &Value) {
    println!("{v}");
}

pub fn status(args: ClientArgs) -> Exit {
    block_on(async move {
        match ask(&args, ControlRequest::Status).await {
            Ok(ControlReply::Status(s)) => {
                if args.json {
                    print_json(&serde_json::to_value(&s).unwrap_or(Value::Null));
                } else {
                    println!(
                        "{} (pid {}) up {} s at {}: budget {}, {} held by {} model(s)",
                        s.version,
                        s.pid,
                        s.uptime_ms / 1000,
                        s.socket,
                        Bytes(s.budget_bytes.get()),
                        Bytes(s.held_bytes.get()),
                        s.models
                    );
                }
                Exit::Ok
            }
            Ok(other) => unexpected(other),
            Err(e) => e,
        }
    })
}

pub fn ps(args: ClientArgs) -> Exit {
    block_on(async move {
        match ask(&args, ControlRequest::Ps).await {
            Ok(ControlReply::Ps(models)) => {
                if args.json {
                    let rows: Vec<Value> = models
                        .iter()
                        .map(crate::daemon::ps_json::status_json)
                        .collect();
                    print_json(&json!({ "models": rows }));
                } else {
                    println!(
                        "{:<28} {:<12} {:>7} {:>10} {:>10} {:>10} {:>7} {:>5} {:>4} {:>16}  LAST FAILURE",
                        "NAME",
                        "STATE",
                        "PID",
                        "FOOTPRINT",
                        "PEAK",
                        "ESTIMATE",
                        "CONTEXT",
                        "REQS",
                        "QUE",
                        "PREFIX CACHE"
                    );
                    for m in &models {
                        println!(
                            "{:<28} {:<12} {:>7} {:>10} {:>10} {:>10} {:>7} {:>5} {:>4} {:>16}  {}",
                            m.name,
                            json!(m.state).as_str().unwrap_or(""),
                            m.pid.map_or("-".into(), |p| p.to_string()),
                            Bytes(m.footprint_bytes).to_string(),
                            Bytes(m.peak_bytes).to_string(),
                            Bytes(m.estimate_bytes).to_string(),
                            m.context,
                            m.requests,
                            m.queued,
                            prefix_cache_cell(m),
                            m.last_failure
                                .as_ref()
                                .map_or("-".into(), |f| format!("{} ({})", f.kind, f.phase))
                        );
                    }
                }
                Exit::Ok
            }
            Ok(other) => unexpected(other),
            Err(e) => e,
        }
    })
}

/// `ps`'s prefix-cache cell: its bytes and hit rate (`-` when off or not loaded).
fn prefix_cache_cell(m: &protocol::control::ModelStatus) -> String {
    if m.prefix_cache_limit_bytes == 0 {
        return "-".into();
    }
    let rate = m
        .prefix_cache_hit_rate
        .map_or("-".into(), |r| format!("{:.0}%", r * 100.0));
    format!("{} {rate}", Bytes(m.prefix_cache_bytes))
}

pub fn ls(args: ClientArgs) -> Exit {
    block_on(async move {
        match ask(&args, ControlRequest::Ls).await {
            Ok(ControlReply::Ls(models)) => {
                if args.json {
                    print_json(&json!({ "models": models }));
                } else {
                    println!(
                        "{:<40} {:>10} {:>10} {:>7}  VERDICT",
                        "NAME", "SIZE", "ESTIMATE", "CONTEXT"
                    );
                    for m in &models {
                        println!(
                            "{:<40} {:>10} {:>10} {:>7}  {}{}",
                            m.name,
                            Bytes(m.size_bytes.get()).to_string(),
                            Bytes(m.estimate_bytes.get()).to_string(),
                            m.context,
                            m.verdict,
                            if m.loaded { " (loaded)" } else { "" }
                        );
                    }
                }
                Exit::Ok
            }
            Ok(other) => unexpected(other),
            Err(e) => e,
        }
    })
}

pub fn load(args: LoadArgs) -> Exit {
    let json = args.client.json;
    block_on(async move {
        let m = &args.model;
        let req = ControlRequest::Load(LoadModel {
            model: m.model.clone(),
            context: m.context,
            keep_alive: m.keep_alive,
            force: m.force,
            fault: m.inject_fault,
            device: m.device,
            compute: m.compute,
            kv_bits: m.kv_bits,
            prefix_cache: args.prefix_cache,
        });
        let mut client = match connect(&args.client).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let reply = client
            .call(req, |ev| {
                if let ControlEvent::Note(n) = ev {
                    if !json {
                        eprintln!("mlxsup: {n}");
                    }
                }
            })
            .await;
        match reply {
            Ok(ControlReply::Loaded(s)) => {
                if json {
                    print_json(&crate::daemon::ps_json::status_json(&s));
                } else {
                    println!(
                        "loaded {} (pid {}) at context {}: estimate {}{}",
                        s.name,
                        s.pid.map_or("-".into(), |p| p.to_string()),
                        s.context,
                        Bytes(s.estimate_bytes),
                        s.note
                            .as_deref()
                            .map_or(String::new(), |n| format!("; {n}"))
                    );
                }
                Exit::Ok
            }
            Ok(other) => reply_exit(other, json),
            Err(e) => {
                eprintln!("mlxsup: {e}");
                Exit::Internal
            }
        }
    })
}

pub fn unload(args: UnloadArgs) -> Exit {
    let json = args.client.json;
    block_on(async move {
        match ask(
            &args.client,
            ControlRequest::Unload {
                model: args.model.clone(),
            },
        )
        .await
        {
            Ok(ControlReply::Unloaded(s)) => {
                if json {
                    print_json(&crate::daemon::ps_json::status_json(&s));
                } else {
                    println!("unloaded {}", s.name);
                }
                Exit::Ok
            }
            Ok(other) => reply_exit(other, json),
            Err(e) => e,
        }
    })
}

pub fn stop(args: ClientArgs) -> Exit {
    block_on(async move {
        let socket = daemon::socket_path(args.socket.as_deref());
        match ask(&args, ControlRequest::Shutdown).await {
            Ok(ControlReply::ShuttingDown) => {
                // Wait for it to be gone (its socket removed), briefly.
                for _ in 0..200 {
                    if !socket.exists() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if args.json {
                    print_json(&json!({ "stopped": true }));
                } else {
                    println!("the daemon at {} stopped", socket.display());
                }
                Exit::Ok
            }
            Ok(other) => unexpected(other),
            Err(e) => e,
        }
    })
}

/// `generate`: like `run`, through the daemon.
pub fn generate(args: GenerateArgs) -> Exit {
    let mut out = Output::new(args.client.json);
    block_on(async move {
        let prompt = match args.prompt.prompt() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return Exit::Usage;
            }
        };
        let m = &args.model;
        let (prompt, images) = match images_for_generate(&args, prompt).await {
            Ok(p) => p,
            Err(e) => return e,
        };
        let mut request = args.prompt.request(prompt, m.inject_fault);
        request.images = images;
        let req = ControlRequest::Generate(GenerateModel {
            model: m.model.clone(),
            request,
            context: m.context,
            keep_alive: m.keep_alive,
            force: m.force,
            device: m.device,
            compute: m.compute,
            kv_bits: m.kv_bits,
        });
        let mut client = match connect(&args.client).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let id = match client.send(req).await {
            Ok(id) => id,
            Err(e) => {
                eprintln!("mlxsup: {e}");
                return Exit::Internal;
            }
        };
        let interrupt = tokio_util::sync::CancellationToken::new();
        let listener = crate::rt::cancel_on_signal(interrupt.clone());
        let mut cancel_sent = false;
        let exit = loop {
            let next = tokio::select! {
                n = client.next() => n,
                _ = interrupt.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    let _ = client.cancel(id).await;
                    continue;
                }
            };
            match next {
                Ok((rid, Err(ev))) if rid == id => on_event(&mut out, &ev),
                Ok((rid, Ok(reply))) if rid == id => {
                    break match reply {
                        ControlReply::Done(d) => {
                            if let Some(n) = &d.note {
                                out.note(&format!("mlxsup: {n}"));
                            }
                            out.done(
                                &d.done,
                                d.estimate_bytes,
                                (d.estimate_used_bytes > 0).then_some(
                                    crate::cli::output::UsedEstimate {
                                        context_used: d.context_used,
                                        estimate_used_bytes: d.estimate_used_bytes,
                                    },
                                ),
                            );
                            Exit::Ok
                        }
                        ControlReply::Cancelled => {
                            out.note("mlxsup: interrupted; the request was cancelled");
                            Exit::Interrupted
                        }
                        ControlReply::Failed(f) => failure_exit(&mut out, &f),
                        other => reply_exit(other, args.client.json),
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("mlxsup: {e}");
                    break Exit::Internal;
                }
            }
        };
        listener.abort();
        exit
    })
}

fn on_event(out: &mut Output, ev: &ControlEvent) {
    match ev {
        ControlEvent::Estimate(est) => out.estimate_event(est),
        ControlEvent::Loaded(info) => out.loaded(info),
        ControlEvent::Worker(ev) => run::on_event(out, ev),
        ControlEvent::Note(n) => out.note_event(n),
        ControlEvent::Model(_) => {}
    }
}

fn failure_exit(out: &mut Output, f: &Failure) -> Exit {
    out.failure(f);
    if f.kind.is_refusal() {
        Exit::Refused
    } else {
        Exit::WorkerFailed
    }
}

/// The exit for a reply that is not the one asked for: failures, bad requests.
fn reply_exit(reply: ControlReply, json: bool) -> Exit {
    match reply {
        ControlReply::Failed(f) => failure_exit(&mut Output::new(json), &f),
        ControlReply::BadRequest { message } => {
            eprintln!("mlxsup: {message}");
            Exit::BadModel
        }
        ControlReply::Cancelled => Exit::Interrupted,
        other => unexpected(other),
    }
}

fn unexpected(reply: ControlReply) -> Exit {
    eprintln!("mlxsup: unexpected reply from the daemon: {reply:?}");
    Exit::Internal
}

/// `generate --image`: the model's folder (the path given, or the one the daemon's `ls`
/// names), its images read and resized as `run --image` does, the prompt made a chat
/// message. Errors are reported here (exit 2 for an image, 5 for the model).
async fn images_for_generate(
    args: &GenerateArgs,
    prompt: protocol::Prompt,
) -> Result<(protocol::Prompt, Vec<protocol::ImageInput>), crate::exit::Exit> {
    if args.images.is_empty() {
        return Ok((prompt, Vec::new()));
    }
    let name = &args.model.model;
    let dir = if std::path::Path::new(name).is_dir() {
        std::path::PathBuf::from(name)
    } else {
        match ask(&args.client, protocol::control::ControlRequest::Ls).await? {
            protocol::control::ControlReply::Ls(models) => {
                match models.into_iter().find(|e| &e.name == name) {
                    Some(e) => std::path::PathBuf::from(e.model),
                    None => {
                        eprintln!("mlxsup: {name}: no such model (mlxsup ls lists them)");
                        return Err(crate::exit::Exit::BadModel);
                    }
                }
            }
            other => {
                eprintln!("mlxsup: unexpected reply from the daemon: {other:?}");
                return Err(crate::exit::Exit::Internal);
            }
        }
    };
    let images = match crate::images::read(&dir, &args.images, 0) {
        Ok(i) => i.inputs,
        Err(crate::images::ImagesError::Model(m)) => {
            eprintln!("{m}");
            return Err(crate::exit::Exit::BadModel);
        }
        Err(crate::images::ImagesError::Image(m)) => {
            eprintln!("{m}");
            return Err(crate::exit::Exit::Usage);
        }
    };
    let prompt = match prompt {
        protocol::Prompt::Text(t) => protocol::Prompt::Chat(vec![protocol::ChatMessage {
            role: "user".into(),
            content: t,
        }]),
        p => p,
    };
    Ok((prompt, images))
}
