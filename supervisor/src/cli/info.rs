//! `mlxsup info`: what MLX the worker runs (version, device, memory) and the budget,
//! proven by a real computation in a worker whose result is checked here.

use estimate::Bytes;
use protocol::{Reply, Request, SystemInfo};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    budget,
    exit::Exit,
    supervise::{ReportContext, SpawnError, SpawnOptions, WorkerHandle},
};

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Side of the square matrices of the check computation.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub matmul: u32,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    worker: String,
    protocol: String,
    system: SystemInfo,
    budget_bytes: u64,
    budget_source: String,
    /// Every limit read, with its room (the smallest is the budget).
    budget_limits: Vec<budget::Limit>,
    #[serde(skip)]
    budget_describe: String,
    matmul: MatmulCheck,
}

#[derive(Serialize)]
struct MatmulCheck {
    size: u32,
    sum: f64,
    expected: f64,
    ok: bool,
    ms: f64,
    gflops: f64,
}

/// The sum of `A·B` for the matrices of `protocol::Request::Matmul`, computed exactly:
/// Σᵢⱼ(AB)ᵢⱼ = Σₖ (Σᵢ Aᵢₖ)(Σⱼ Bₖⱼ).
pub fn expected_matmul_sum(n: u32) -> f64 {
    let n = u64::from(n);
    (0..n)
        .map(|k| {
            let col_a: u64 = (0..n).map(|i| (i + 2 * k) % 7).sum();
            let row_b: u64 = (0..n).map(|j| (3 * k + j) % 5).sum();
            col_a as f64 * row_b as f64
        })
        .sum()
}

pub fn main(args: InfoArgs) -> Exit {
    crate::rt::block_on(run(args))
}

async fn run(args: InfoArgs) -> Exit {
    let budget = match budget::budget(None) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mlxsup: {e}");
            return Exit::Internal;
        }
    };
    let worker = match WorkerHandle::spawn(SpawnOptions::utility(), ReportContext::default()).await
    {
        Ok(w) => w,
        Err(SpawnError::Setup(m)) => {
            eprintln!("mlxsup: {m}");
            return Exit::Internal;
        }
        Err(e) => {
            eprintln!("mlxsup: {e}");
            return Exit::WorkerFailed;
        }
    };
    let ask = |body| worker.call(body, CancellationToken::new(), |_| {});
    let system = match ask(Request::SystemInfo).await.into_reply() {
        Ok(Reply::SystemInfo(s)) => s,
        other => return unexpected(other),
    };
    let (sum, ms) = match ask(Request::Matmul { size: args.matmul })
        .await
        .into_reply()
    {
        Ok(Reply::Matmul { sum, ms, .. }) => (sum, ms),
        other => return unexpected(other),
    };
    let peer = worker.peer.clone();
    worker.shutdown().await;
    let expected = expected_matmul_sum(args.matmul);
    let n = f64::from(args.matmul);
    let report = Report {
        worker: peer.build,
        protocol: peer.version.to_string(),
        system,
        budget_bytes: budget.bytes.0,
        budget_describe: budget.describe(),
        budget_source: budget.source,
        budget_limits: budget.limits,
        matmul: MatmulCheck {
            size: args.matmul,
            sum,
            expected,
            ok: sum == expected,
            ms,
            gflops: if ms > 0.0 {
                2.0 * n * n * n / (ms * 1e6)
            } else {
                0.0
            },
        },
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("mlxsup: {e}");
                return Exit::Internal;
            }
        }
    } else {
        let s = &report.system;
        println!(
            "worker      {} (protocol {}, pid {})",
            report.worker, report.protocol, s.pid
        );
        println!(
            "MLX         {} on {} ({} backend)",
            s.mlx_version, s.device, s.backend
        );
        println!(
            "memory      {} total, MLX limit {}",
            Bytes(s.total_memory),
            Bytes(s.memory_limit)
        );
        if let Some(w) = s.recommended_working_set {
            println!("Metal       recommended working set {}", Bytes(w));
        }
        println!(
            "budget      {} ({})",
            Bytes(report.budget_bytes),
            report.budget_describe
        );
        for l in report
            .budget_limits
            .iter()
            .filter(|l| l.source != report.budget_source)
        {
            println!(
                "            also {}: {} room",
                l.describe(),
                Bytes(l.room_bytes)
            );
        }
        let m = &report.matmul;
        println!(
            "check       {0}×{0} f32 matmul in MLX: sum {1} (expected {2}) {3}, {4:.2} ms, {5:.1} GFLOP/s",
            m.size,
            m.sum,
            m.expected,
            if m.ok { "ok" } else { "WRONG" },
            m.ms,
            m.gflops
        );
    }
    if report.matmul.ok {
        Exit::Ok
    } else {
        eprintln!("mlxsup: MLX computed a wrong result");
        Exit::Internal
    }
}

fn unexpected(r: Result<Reply, String>) -> Exit {
    match r {
        Err(m) => {
            eprintln!("mlxsup: {m}");
            Exit::WorkerFailed
        }
        Ok(other) => {
            eprintln!("mlxsup: unexpected reply from the worker: {other:?}");
            Exit::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expected_sum_matches_a_naive_product() {
        let n = 13u64;
        let a = |i: u64, j: u64| ((i + 2 * j) % 7) as f64;
        let b = |i: u64, j: u64| ((3 * i + j) % 5) as f64;
        let mut naive = 0.0;
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    naive += a(i, k) * b(k, j);
                }
            }
        }
        assert_eq!(super::expected_matmul_sum(n as u32), naive);
    }
}
