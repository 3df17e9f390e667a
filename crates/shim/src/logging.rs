//! The shim's log goes to the `log` fifo containerd reads from the bundle.
//! Only wasmcell's own records (and the shim library's) pass at debug level:
//! Wasmtime and Cranelift log thousands of lines per compile, which would
//! drown containerd's log on a node running with debug on.

use containerd_shim::logger::FifoLogger;
use log::{LevelFilter, Log, Metadata, Record};

struct Filtered {
    inner: FifoLogger,
    ours: LevelFilter,
}

fn is_ours(target: &str) -> bool {
    target.starts_with("wasmcell") || target.starts_with("containerd_shim")
}

impl Log for Filtered {
    fn enabled(&self, m: &Metadata) -> bool {
        if is_ours(m.target()) {
            m.level() <= self.ours
        } else {
            m.level() <= LevelFilter::Warn
        }
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Sets up logging to `./log` (the bundle's fifo); `debug` comes from the
/// `-debug` flag containerd passes when it runs at debug level.
pub(crate) fn init(debug: bool) -> std::io::Result<()> {
    let inner = FifoLogger::with_path("log")?;
    let ours = if debug { LevelFilter::Debug } else { LevelFilter::Info };
    if log::set_boxed_logger(Box::new(Filtered { inner, ours })).is_ok() {
        log::set_max_level(ours);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_targets_pass_below_warn() {
        let f = Filtered { inner: FifoLogger::with_file(tempfile::tempfile().unwrap()), ours: LevelFilter::Debug };
        let m = |target: &'static str, level| Metadata::builder().target(target).level(level).build();
        assert!(f.enabled(&m("wasmcell_shim::service", log::Level::Debug)));
        assert!(!f.enabled(&m("cranelift_codegen::isa", log::Level::Debug)));
        assert!(!f.enabled(&m("wasmtime::runtime", log::Level::Info)));
        assert!(f.enabled(&m("wasmtime::runtime", log::Level::Warn)));
    }
}
