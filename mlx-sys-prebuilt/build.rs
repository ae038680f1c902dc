//! Build script of the project's `mlx-sys`: mlx-c 0.7.0 over a prebuilt MLX 0.32.2.
//!
//! 1. The MLX prefix: `MLX_PREFIX` (the workspace's `.cargo/config.toml` points it at
//!    `.mlx/mlx`, where `make setup` installs the official wheel). It must hold
//!    `include/mlx/mlx.h` and `lib/libmlx.so` (`libmlx.dylib` on macOS).
//! 2. The mlx-c 0.7.0 sources: `MLX_C_DIR`, or the `src/mlx-c` folder of the crates.io
//!    `mlx-sys` 0.7.0 package, which cargo fetches for a throwaway manifest.
//! 3. mlx-c (plus the half-float accessors off aarch64) compiled into `libmlxc.a`;
//!    `libmlx` linked dynamically.
//! 4. bindgen over mlx-c's headers, as upstream mlx-sys does.
//!
//! Binaries that link MLX read `DEP_MLX_LIB_DIR` (for their rpath) and
//! `DEP_MLX_OPENBLAS` (Debian's OpenBLAS, to put ahead of the wheel's reference BLAS).
use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{exit, Command},
};

const UPSTREAM_MLX_SYS: &str = "0.7.0";
const PINNED_MLX: &str = "0.32.2";

fn main() {
    for var in ["MLX_PREFIX", "MLX_C_DIR", "MLXSUP_NO_OPENBLAS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");

    let out = PathBuf::from(env_or_fail("OUT_DIR"));
    let csrc = PathBuf::from(env_or_fail("CARGO_MANIFEST_DIR")).join("csrc");
    let arch = env_or_fail("CARGO_CFG_TARGET_ARCH");
    let os = env_or_fail("CARGO_CFG_TARGET_OS");

    let prefix = find_prefix(&os);
    let include = prefix.join("include");
    check_version(&include);
    let mlx_c = find_mlx_c(&out);

    // mlx-c -> libmlxc.a (cc also links the C++ standard library).
    let mut sources = list(&mlx_c.join("mlx/c"), "cpp");
    if arch != "aarch64" {
        sources.push(csrc.join("half_accessors.cpp"));
    }
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .include(&mlx_c)
        .include(&include)
        .flag("-include")
        .flag(path_str(&csrc.join("format_shim.h")))
        .warnings(false)
        .files(&sources)
        .compile("mlxc");

    // libmlx. The search path goes through a symlink inside OUT_DIR because `cargo run`
    // and `cargo test` put search paths that lie inside the target dir on the dynamic
    // loader path; binaries run directly rely on the rpath their own build script sets.
    let lib_dir = prefix.join("lib");
    let search = stage_in_out_dir(&out, &prefix).unwrap_or_else(|| lib_dir.clone());
    println!("cargo:rustc-link-search=native={}", search.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    println!("cargo::metadata=lib_dir={}", lib_dir.display());
    println!("cargo::metadata=backend={}", backend(&prefix, &os));
    if os == "linux" && env::var_os("MLXSUP_NO_OPENBLAS").is_none() {
        if let Some(blas) = find_openblas() {
            println!("cargo::metadata=openblas={}", blas.display());
        } else {
            println!(
                "cargo:warning=Debian's OpenBLAS (libopenblas0-pthread) is not installed: MLX \
                 falls back to the wheel's reference BLAS (f32 matmuls ~30x slower)"
            );
        }
    }

    let mut builder = bindgen::Builder::default()
        .rust_target(bindgen::RustTarget::stable(73, 0).unwrap_or_else(|e| fail(&e.to_string())))
        .clang_arg(format!("-I{}", mlx_c.display()))
        .blocklist_function("malloc")
        .blocklist_function("realloc")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    if arch != "aarch64" {
        builder = builder
            .clang_arg("-include")
            .clang_arg(path_str(&csrc.join("half_types.h")));
    }
    for header in list(&mlx_c.join("mlx/c"), "h") {
        builder = builder.header(path_str(&header));
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen over mlx-c's headers failed: {e}")));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("writing bindings.rs: {e}")));
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    exit(1)
}

fn env_or_fail(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| fail(&format!("cargo did not set {name}")))
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| fail(&format!("path is not UTF-8: {}", p.display())))
}

fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| fail(&format!("reading {}: {e}", dir.display())));
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new(ext)))
        .collect();
    files.sort();
    files
}

fn find_prefix(os: &str) -> PathBuf {
    let lib = if os == "macos" {
        "lib/libmlx.dylib"
    } else {
        "lib/libmlx.so"
    };
    let wheel = match os {
        "macos" => format!("mlx-metal=={PINNED_MLX}"),
        _ => format!("mlx-cpu=={PINNED_MLX}, or mlx-cuda-13 with MLX_BACKEND=cuda"),
    };
    let hint = format!(
        "run `make setup` in the repository (it installs the MLX wheel, {wheel}, into \
         .mlx/), or set MLX_PREFIX to the `mlx` folder of such an installation"
    );
    let Some(prefix) = env::var_os("MLX_PREFIX").map(PathBuf::from) else {
        fail(&format!("no MLX to link: MLX_PREFIX is not set; {hint}"));
    };
    if !prefix.join("include/mlx/mlx.h").is_file() || !prefix.join(lib).is_file() {
        fail(&format!(
            "no MLX to link at MLX_PREFIX={} (it needs include/mlx/mlx.h and {lib}); {hint}",
            prefix.display()
        ));
    }
    prefix
}

fn check_version(include: &Path) {
    let text = fs::read_to_string(include.join("mlx/version.h")).unwrap_or_default();
    let part = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("#define {name} ")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let found = format!(
        "{}.{}.{}",
        part("MLX_VERSION_MAJOR"),
        part("MLX_VERSION_MINOR"),
        part("MLX_VERSION_PATCH")
    );
    if found != PINNED_MLX {
        println!(
            "cargo:warning=MLX headers say {found}; mlx-c {UPSTREAM_MLX_SYS} is written against \
             MLX {PINNED_MLX} and does not compile against 0.32.4"
        );
    }
}

/// Which wheel the prefix came from, by the dist-info folder beside it.
fn backend(prefix: &Path, os: &str) -> &'static str {
    let names: Vec<String> = prefix
        .parent()
        .and_then(|p| fs::read_dir(p).ok())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if names.iter().any(|n| n.starts_with("mlx_cuda")) {
        "cuda"
    } else if os == "macos" {
        "metal"
    } else {
        "cpu"
    }
}

fn find_openblas() -> Option<PathBuf> {
    let target = env::var("TARGET").ok()?;
    let mut parts = target.split('-');
    let multiarch = format!("{}-linux-gnu", parts.next()?);
    [
        format!("/usr/lib/{multiarch}/libopenblas.so.0"),
        format!("/usr/lib/{multiarch}/openblas-pthread/libopenblas.so.0"),
        "/usr/lib64/libopenblas.so.0".to_string(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// mlx-c's sources: `MLX_C_DIR`, else the crates.io `mlx-sys` package's `src/mlx-c`.
fn find_mlx_c(out: &Path) -> PathBuf {
    let has_headers = |p: &Path| p.join("mlx/c/mlx.h").is_file();
    if let Some(p) = env::var_os("MLX_C_DIR").map(PathBuf::from) {
        if !has_headers(&p) {
            fail(&format!("MLX_C_DIR={} has no mlx/c/mlx.h", p.display()));
        }
        return p;
    }
    // A throwaway manifest that depends on the real crates.io package; `cargo metadata`
    // downloads it into the registry (or finds it there) and tells where it is. It runs
    // from "/" so that this workspace's [patch] does not redirect it back to us.
    let dir = out.join("mlx-c-source");
    let manifest = dir.join("Cargo.toml");
    let write = fs::create_dir_all(&dir)
        .and_then(|_| {
            fs::write(
                &manifest,
                format!(
                    "[package]\nname = \"mlx-c-source\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
                     publish = false\n[lib]\npath = \"lib.rs\"\n[dependencies]\n\
                     mlx-sys = {{ version = \"={UPSTREAM_MLX_SYS}\", default-features = false }}\n\
                     [workspace]\n"
                ),
            )
        })
        .and_then(|_| fs::write(dir.join("lib.rs"), ""));
    if let Err(e) = write {
        fail(&format!("writing {}: {e}", manifest.display()));
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let metadata = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir("/")
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(&manifest);
        if offline {
            cmd.arg("--offline");
        }
        cmd.output()
    };
    let output = match metadata(true) {
        Ok(o) if o.status.success() => o,
        _ => match metadata(false) {
            Ok(o) if o.status.success() => o,
            Ok(o) => fail(&format!(
                "`cargo metadata` could not fetch mlx-sys {UPSTREAM_MLX_SYS} (its mlx-c sources): {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => fail(&format!("running `cargo metadata`: {e}")),
        },
    };
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| fail(&format!("`cargo metadata` output: {e}")));
    let packages = json["packages"].as_array().cloned().unwrap_or_default();
    for pkg in packages {
        if pkg["name"] == "mlx-sys" && pkg["version"] == UPSTREAM_MLX_SYS {
            if let Some(manifest) = pkg["manifest_path"].as_str() {
                let src = Path::new(manifest)
                    .parent()
                    .map(|p| p.join("src/mlx-c"))
                    .unwrap_or_default();
                if has_headers(&src) {
                    return src;
                }
                fail(&format!("{} has no mlx/c/mlx.h", src.display()));
            }
        }
    }
    fail(&format!(
        "mlx-sys {UPSTREAM_MLX_SYS} is not in `cargo metadata`'s answer"
    ))
}

/// Symlinks the folder holding the `mlx` package (and the wheel's bundled libraries
/// beside it) into OUT_DIR; returns the lib dir as seen through the link.
fn stage_in_out_dir(out: &Path, prefix: &Path) -> Option<PathBuf> {
    let root = prefix.parent()?;
    let link = out.join("mlx-root");
    let _ = fs::remove_file(&link);
    #[cfg(unix)]
    std::os::unix::fs::symlink(root, &link).ok()?;
    Some(link.join(prefix.file_name()?).join("lib"))
}
