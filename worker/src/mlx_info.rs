//! Facts about this process's MLX: version, device, memory limits, and a checkable
//! computation that proves the library really runs.

use std::{ffi::CStr, time::Instant};

use mlx_rs::{Array, Dtype};
use protocol::SystemInfo;

/// The MLX library version (e.g. `0.32.2`), as libmlx reports it.
pub fn mlx_version() -> String {
    // SAFETY: mlx_string is an owned handle: created, filled by mlx_version, read while
    // alive, freed once.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let text = if mlx_sys::mlx_version(&mut s) == 0 {
            let data = mlx_sys::mlx_string_data(s);
            if data.is_null() {
                None
            } else {
                Some(CStr::from_ptr(data).to_string_lossy().into_owned())
            }
        } else {
            None
        };
        mlx_sys::mlx_string_free(s);
        text.unwrap_or_else(|| "unknown".into())
    }
}

/// The wheel this binary was linked against (`cpu`, `metal`, `cuda`).
pub const BACKEND: &str = env!("MLXSUP_MLX_BACKEND");

/// Size-valued keys of MLX's `device_info` for the default device (`memory_size`,
/// `max_recommended_working_set_size`, `max_buffer_length` on Metal; none on the CPU).
fn device_size(key: &CStr) -> Option<u64> {
    // SAFETY: handles are created, used while alive and freed; the key is NUL-terminated.
    unsafe {
        let mut dev = mlx_sys::mlx_device_new();
        if mlx_sys::mlx_get_default_device(&mut dev) != 0 {
            mlx_sys::mlx_device_free(dev);
            return None;
        }
        let mut info = mlx_sys::mlx_device_info_new();
        let mut value: usize = 0;
        let ok = mlx_sys::mlx_device_info_get(&mut info, dev) == 0
            && mlx_sys::mlx_device_info_get_size(&mut value, info, key.as_ptr()) == 0;
        mlx_sys::mlx_device_info_free(info);
        mlx_sys::mlx_device_free(dev);
        ok.then_some(value as u64)
    }
}

/// Physical memory of the machine.
fn total_memory() -> u64 {
    if let Some(m) = device_size(c"memory_size") {
        return m;
    }
    #[cfg(target_os = "linux")]
    {
        if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                return kib * 1024;
            }
        }
    }
    0
}

/// Makes `device` MLX's default before anything is allocated. A GPU on a backend without
/// one (the Linux CPU wheel) stays the CPU: that is the device MLX has.
pub fn use_device(device: protocol::Device) {
    match device {
        protocol::Device::Cpu => mlx_rs::Device::set_default(&mlx_rs::Device::cpu()),
        protocol::Device::Gpu if BACKEND != "cpu" => {
            mlx_rs::Device::set_default(&mlx_rs::Device::gpu())
        }
        protocol::Device::Gpu | protocol::Device::Default => {}
    }
}

/// The default device's type as a word.
pub fn device_name() -> String {
    match mlx_rs::Device::try_default().and_then(|d| d.get_type()) {
        Ok(mlx_rs::DeviceType::Gpu) => "gpu".into(),
        Ok(mlx_rs::DeviceType::Cpu) => "cpu".into(),
        Err(_) => "unknown".into(),
    }
}

/// The backend a model on `device` (`cpu`, `gpu`) runs on: `cpu` on the CPU device,
/// else the build's (`metal`, `cuda`).
pub fn backend_of(device: &str) -> String {
    if device == "cpu" {
        "cpu".into()
    } else {
        BACKEND.into()
    }
}

/// Everything the supervisor asks with `SystemInfo`.
pub fn system_info() -> SystemInfo {
    SystemInfo {
        mlx_version: mlx_version(),
        device: device_name(),
        backend: BACKEND.into(),
        total_memory: total_memory(),
        memory_limit: mlx_rs::memory::memory_limit().unwrap_or(0) as u64,
        recommended_working_set: device_size(c"max_recommended_working_set_size"),
        max_buffer_length: device_size(c"max_buffer_length"),
        pid: std::process::id(),
    }
}

/// Sum of `A·B` for `A[i][j] = (i + 2j) mod 7`, `B[i][j] = (3i + j) mod 5` (n×n, f32),
/// computed by MLX; returns the sum and the milliseconds the matmul took.
pub fn matmul_check(n: u32) -> Result<(f64, f64), mlx_rs::error::Exception> {
    let n = n as usize;
    let a: Vec<f32> = (0..n * n)
        .map(|k| ((k / n + 2 * (k % n)) % 7) as f32)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|k| ((3 * (k / n) + k % n) % 5) as f32)
        .collect();
    let dims = [n as i32, n as i32];
    let a = Array::from_slice(&a, &dims);
    let b = Array::from_slice(&b, &dims);
    mlx_rs::transforms::eval([&a, &b])?;
    let start = Instant::now();
    let c = a.matmul(&b)?;
    c.eval()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let sum = c.as_dtype(Dtype::Float64).and_then(|c| c.sum(None))?;
    let sum = sum
        .try_item_exact::<f64>()
        .map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
    Ok((sum, ms))
}
