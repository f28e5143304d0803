//! A trial's output, kept until it is known whether the trial failed.
//!
//! libtest-mimic captures nothing, so without this a green run would show every panic message
//! and backtrace a trial catches on purpose (a snapshot mismatch it expects), insta's diffs
//! and the pact verifier's full report, `(FAILED)` lines included. Here:
//!
//! - [`output_of`] runs a closure with a buffer of its own on the current thread: panics on
//!   that thread (message, location and, as `RUST_BACKTRACE` says, the backtrace) and
//!   [`note`]s go into the buffer instead of the terminal. The runner wraps every trial in it
//!   and shows the buffer with the failure message, and only then.
//! - [`stdout_of`] captures what a library prints itself (the verifier's report on stdout;
//!   insta's diff on stdout and its notices on stderr), at the file descriptor, so the caller
//!   can keep it for a failure.
//!
//! `HARNESS_VERBOSE=1` turns all of it off: everything is printed as it happens.

use std::cell::RefCell;
use std::io::{Read as _, Seek as _, Write as _};
use std::sync::{Mutex, Once};

thread_local! {
    static BUFFER: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Whether `HARNESS_VERBOSE` asks for all output as it happens (set, and not `0`).
/// The process's setting (see [`crate::settings::Settings::process`]): the panic hook
/// and output capture belong to the process.
pub fn verbose() -> bool {
    crate::settings::Settings::process().verbose()
}

/// Runs `f` with an output buffer of its own on this thread and returns what was written to
/// it (panics and notes); empty with `HARNESS_VERBOSE=1`, which prints them instead. Nested
/// calls each get their own buffer.
pub fn output_of<R>(f: impl FnOnce() -> R) -> (R, String) {
    install_panic_hook();
    if verbose() {
        return (f(), String::new());
    }
    let outer = BUFFER.with(|b| b.borrow_mut().replace(String::new()));
    let mut scope = Scope(Some(outer));
    let result = f();
    let text = scope.end();
    (result, text)
}

/// The buffer of one [`output_of`]; ending it restores the enclosing one.
struct Scope(Option<Option<String>>);

impl Scope {
    fn end(&mut self) -> String {
        let outer = self.0.take().flatten();
        BUFFER
            .with(|b| std::mem::replace(&mut *b.borrow_mut(), outer))
            .unwrap_or_default()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if self.0.is_some() {
            // `f` unwound: what it wrote (the panic's message among it) must not be lost.
            let text = self.end();
            if !text.is_empty() {
                note(&text);
            }
        }
    }
}

/// Adds text to the current thread's output buffer, or prints it to stderr when there is none
/// (or with `HARNESS_VERBOSE=1`).
pub fn note(text: &str) {
    let kept = BUFFER.with(|b| match &mut *b.borrow_mut() {
        Some(buffer) => {
            buffer.push_str(text);
            if !text.ends_with('\n') {
                buffer.push('\n');
            }
            true
        }
        None => false,
    });
    if !kept {
        eprintln!("{text}");
    }
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let buffered = BUFFER.with(|b| b.borrow().is_some());
            if !buffered {
                return previous(info);
            }
            let thread = std::thread::current();
            let mut text = format!(
                "thread '{}' panicked at {}:\n{}\n",
                thread.name().unwrap_or("<unnamed>"),
                info.location()
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "an unknown place".into()),
                payload_text(info.payload())
            );
            // `capture` follows RUST_BACKTRACE / RUST_LIB_BACKTRACE, as the default hook does.
            let backtrace = std::backtrace::Backtrace::capture();
            if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
                text.push_str(&format!("stack backtrace:\n{backtrace}\n"));
            }
            note(&text);
        }));
    });
}

/// A panic payload as text (`panic!` gives a `&str` or a `String`).
pub fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(a panic payload that is not text)".into())
}

/// One redirection at a time: they replace the same file descriptors.
static REDIRECT: Mutex<()> = Mutex::new(());

/// Runs `f` with the process's stdout (file descriptor 1) sent to a temporary file and returns
/// what was written there.
///
/// With `exclusive`, stderr (2) is captured too (after stdout in the text), and the calling
/// thread holds Rust's stdout and stderr locks throughout, so no other thread's `print!` or
/// `eprint!` lands in the capture (they wait): only for an `f` that prints from this thread
/// and waits for no other thread that might print (insta). Without it, output of other threads
/// to stdout during `f` is captured too, and the caller writes back what is not its own
/// ([`write_back`]). With `HARNESS_VERBOSE=1`, or when a descriptor cannot be redirected,
/// nothing is captured.
pub fn stdout_of<R>(exclusive: bool, f: impl FnOnce() -> R) -> (R, String) {
    if verbose() {
        return (f(), String::new());
    }
    let Some(_one) = redirect_turn() else {
        return (f(), String::new());
    };
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let _locks = exclusive.then(|| (stdout.lock(), stderr.lock()));
    let fds: &[i32] = if exclusive { &[1, 2] } else { &[1] };
    // What is buffered belongs before the capture.
    let _ = std::io::stdout().flush();
    let mut redirected = Vec::new();
    for &fd in fds {
        match Redirect::new(fd) {
            Some(r) => redirected.push(r),
            None => {
                drop(redirected);
                return (f(), String::new());
            }
        }
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let _ = std::io::stdout().flush();
    let text: String = redirected.into_iter().map(Redirect::end).collect();
    match result {
        Ok(r) => (r, text),
        Err(panic) => {
            // Shown, since the panic will be.
            print!("{text}");
            std::panic::resume_unwind(panic)
        }
    }
}

/// Waits for the other capture to end, but not forever: code inside a verifier capture (a
/// provider state) that captures too would otherwise wait for itself. Then it prints instead.
fn redirect_turn() -> Option<std::sync::MutexGuard<'static, ()>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match REDIRECT.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// A file descriptor sent to a temporary file; dropping it (or [`Redirect::end`]) restores it.
struct Redirect {
    fd: std::os::fd::RawFd,
    saved: std::os::fd::RawFd,
    file: std::fs::File,
}

impl Redirect {
    fn new(fd: std::os::fd::RawFd) -> Option<Redirect> {
        use std::os::fd::AsRawFd as _;
        let file = tempfile::tempfile().ok()?;
        let saved = nix::unistd::dup(fd).ok()?;
        if nix::unistd::dup2(file.as_raw_fd(), fd).is_err() {
            let _ = nix::unistd::close(saved);
            return None;
        }
        Some(Redirect { fd, saved, file })
    }

    /// Restores the descriptor and returns what was written to it.
    fn end(mut self) -> String {
        self.restore();
        let mut text = String::new();
        let _ = self
            .file
            .rewind()
            .and_then(|()| self.file.read_to_string(&mut text).map(drop));
        text
    }

    fn restore(&mut self) {
        if self.saved >= 0 {
            let _ = nix::unistd::dup2(self.saved, self.fd);
            let _ = nix::unistd::close(self.saved);
            self.saved = -1;
        }
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Prints what a capture holds besides `own` (the text the caller knows it printed itself,
/// e.g. the verifier's report): output of other threads is never lost. When `own` is not
/// found in one piece (other output interleaved with it), everything is printed.
pub fn write_back(captured: &str, own: &str) {
    let rest = match captured.find(own) {
        Some(at) if !own.is_empty() => {
            format!("{}{}", &captured[..at], &captured[at + own.len()..])
        }
        _ => captured.to_string(),
    };
    if !rest.is_empty() {
        print!("{rest}");
        let _ = std::io::stdout().flush();
    }
}
