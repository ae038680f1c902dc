//! A phase's own MLX peak (`worker::peak::during`) against real MLX allocations, alone in
//! its process so no other test allocates while the counter is reset.

use mlx_rs::Array;

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[test]
fn a_phase_peak_is_its_own_and_the_run_peak_is_kept() -> R<()> {
    let big = Array::zeros::<f32>(&[1 << 22])?;
    big.eval()?;
    drop(big);
    let _ = mlx_rs::memory::clear_cache();
    let before = worker::peak::active();
    let (sum, p) = worker::peak::during(|| -> R<f32> {
        let a = Array::ones::<f32>(&[1 << 18])?;
        let s = a.sum(None)?;
        Ok(s.try_item_exact::<f32>()?)
    });
    assert_eq!(sum?, (1 << 18) as f32);
    let own = p.saturating_sub(before);
    assert!(
        own >= 1 << 20,
        "the phase's 1 MiB array is in its peak: {own}"
    );
    assert!(own < 8 << 20, "the earlier 16 MiB array is not: {own}");
    assert!(
        worker::peak::peak() >= 16 << 20,
        "the run's peak keeps it: {}",
        worker::peak::peak()
    );
    Ok(())
}
