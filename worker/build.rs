//! Makes `mlxsup-worker` find MLX without LD_LIBRARY_PATH, and puts Debian's OpenBLAS
//! ahead of the wheel's reference BLAS when it is installed.
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIB_DIR");
    println!("cargo:rerun-if-env-changed=DEP_MLX_OPENBLAS");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let origin = if os == "macos" {
        "@loader_path"
    } else {
        "$ORIGIN"
    };
    // Installed layout first (binary next to an `mlx` prefix, or in bin/ beside lib/),
    // then the prefix it was built against.
    let mut rpaths = vec![
        format!("{origin}/mlx/lib"),
        format!("{origin}/../lib/mlxsup/mlx/lib"),
    ];
    if let Ok(dir) = env::var("DEP_MLX_LIB_DIR") {
        rpaths.push(dir);
    }
    for rpath in rpaths {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    }
    if let Ok(blas) = env::var("DEP_MLX_OPENBLAS") {
        // Needed first, so its sgemm/cblas symbols win over the ones of the wheel's
        // libblas that libmlx needs; --no-as-needed because nothing of ours calls it.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg={blas}");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    let backend = env::var("DEP_MLX_BACKEND").unwrap_or_else(|_| "cpu".into());
    println!("cargo:rustc-env=MLXSUP_MLX_BACKEND={backend}");
}
