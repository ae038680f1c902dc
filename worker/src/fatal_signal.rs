//! Last words on a fatal signal: before SIGSEGV/SIGBUS/SIGABRT kill the worker, write the
//! faulting address and the process's virtual size, RSS and data segment to stderr, so
//! the supervisor can tell a write through a failed allocation or an abort at a memory
//! limit (MLX's CPU backend under `RLIMIT_AS`: a thread it could not start ends in
//! `terminate called without an active exception`) from any other crash. Everything in
//! the handler is async-signal-safe.

use std::sync::atomic::{AtomicUsize, Ordering};

static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// The line the supervisor looks for:
/// `mlxsup-worker: fatal SIGSEGV addr=0x… vm=… rss=… data=…`.
pub const PREFIX: &str = "mlxsup-worker: fatal ";

/// Installs the handler (once, at start-up) on an alternate stack.
pub fn install() {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Ok(p) = usize::try_from(page) {
        PAGE.store(p, Ordering::Relaxed);
    }
    const STACK: usize = 64 * 1024;
    // The alternate stack lives for the whole process.
    let stack: &'static mut [u8] = Box::leak(vec![0u8; STACK].into_boxed_slice());
    // SAFETY: the stack memory is valid forever; the action struct is fully initialised.
    unsafe {
        let ss = libc::stack_t {
            ss_sp: stack.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: STACK,
        };
        libc::sigaltstack(&ss, std::ptr::null_mut());
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGABRT] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fatal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// A fixed buffer for formatting without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn put(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn num(&mut self, mut v: u64, base: u64) {
        let mut digits = [0u8; 24];
        let mut n = 0;
        loop {
            let d = (v % base) as u8;
            digits[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            n += 1;
            v /= base;
            if v == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            self.put(&digits[n..n + 1]);
        }
    }
}

extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.put(PREFIX.as_bytes());
    line.put(match sig {
        libc::SIGBUS => b"SIGBUS",
        libc::SIGABRT => b"SIGABRT",
        _ => b"SIGSEGV",
    });
    line.put(b" addr=0x");
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { fault_address(info) };
    line.num(addr as u64, 16);
    if let Some((vm, rss, data)) = statm() {
        line.put(b" vm=");
        line.num(vm, 10);
        line.put(b" rss=");
        line.num(rss, 10);
        line.put(b" data=");
        line.num(data, 10);
    }
    line.put(b"\n");
    // SAFETY: write(2) and raise(3) are async-signal-safe; the buffer is valid for len
    // bytes.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        // The action is the default again (SA_RESETHAND): the signal, pending until the
        // handler returns, kills the process as it would have. (A fault would also recur
        // on the faulting instruction; a signal sent by kill(2) or abort's would not.)
        libc::raise(sig);
    }
}

#[cfg(target_os = "linux")]
unsafe fn fault_address(info: *mut libc::siginfo_t) -> usize {
    // SAFETY: the caller passes the kernel's siginfo.
    unsafe { (*info).si_addr() as usize }
}

#[cfg(not(target_os = "linux"))]
unsafe fn fault_address(info: *mut libc::siginfo_t) -> usize {
    // SAFETY: the caller passes the kernel's siginfo.
    unsafe { (*info).si_addr as usize }
}

/// Virtual size, RSS and data segment in bytes, read with raw syscalls.
#[cfg(target_os = "linux")]
fn statm() -> Option<(u64, u64, u64)> {
    let mut buf = [0u8; 128];
    // SAFETY: open/read/close are async-signal-safe; the path is NUL-terminated.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let n = usize::try_from(n).ok()?;
    let mut fields = buf[..n].split(|&b| b == b' ');
    let mut parse = || -> Option<u64> {
        let f = fields.next()?;
        let mut v: u64 = 0;
        for &b in f {
            if !b.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        Some(v)
    };
    let page = PAGE.load(Ordering::Relaxed) as u64;
    // size resident shared text lib data dt
    let (vm, rss) = (parse()?, parse()?);
    let _shared_text_lib = (parse()?, parse()?, parse()?);
    Some((vm * page, rss * page, parse()? * page))
}

#[cfg(not(target_os = "linux"))]
fn statm() -> Option<(u64, u64, u64)> {
    None
}
