//! Logging set-up: plain timestamped lines on a terminal or in a file, and
//! syslog-priority lines without a timestamp when stderr is the journal.
//!
//! systemd connects a service's stderr to the journal and says so in
//! `JOURNAL_STREAM` (`DEVICE:INODE` of that stream, see systemd.exec(5)).
//! The journal timestamps every line itself, so our own timestamp would be
//! a second one; and it reads a `<N>` prefix (sd-daemon(3)) as the line's
//! priority, which `journalctl -p warning` filters on. A process whose
//! stderr was redirected elsewhere keeps the variable but not the stream,
//! hence the comparison with stderr's own device and inode.
//!
//! The logger is installed at the most verbose level and `log`'s global
//! maximum does the filtering, so a reload can change the level
//! ([`set_level`]) without replacing the logger.

use std::io::Write;

/// Whether stderr is the stream `JOURNAL_STREAM` names.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = parse_journal_stream(&value.to_string_lossy()) else {
        return false;
    };
    // SAFETY: fstat on a descriptor we do not own only fills a local struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut stat) } != 0 {
        return false;
    }
    stat.st_dev as u64 == device && stat.st_ino as u64 == inode
}

/// `DEVICE:INODE`, both decimal, as systemd writes it.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.trim().split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

/// Installs the logger for this process (once) at `level`.
pub fn init(level: log::LevelFilter) {
    let installed = if stderr_is_journal() {
        log::set_logger(&JournalLogger)
    } else {
        simple_logger::SimpleLogger::new()
            .with_level(log::LevelFilter::Trace)
            .init()
    };
    if let Err(err) = installed {
        eprintln!("aquatic: cannot start logging: {err}");
    }
    set_level(level);
}

/// Changes what is logged from now on (a reload of `log_level`).
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// The syslog priority of a level (sd-daemon(3): `<3>` error … `<7>` debug).
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// One line for the journal: priority, level name, target, message.
fn journal_line(record: &log::Record<'_>) -> String {
    let mut line = format!(
        "<{}>{:<5} [{}] {}",
        priority(record.level()),
        record.level(),
        record.target(),
        record.args()
    );
    // A message with line breaks would become several journal entries,
    // all but the first at the default priority: keep it one entry.
    if line.contains('\n') {
        line = line.replace('\n', " | ");
    }
    line.push('\n');
    line
}

/// Writes `<N>`-prefixed lines to stderr, without a timestamp.
struct JournalLogger;

impl log::Log for JournalLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line so lines of different threads never mix.
            let _ = std::io::stderr()
                .lock()
                .write_all(journal_line(record).as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parses() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
    }

    #[test]
    fn journal_lines_carry_the_priority() {
        let line = |level| {
            journal_line(
                &log::Record::builder()
                    .level(level)
                    .target("aquatic::server")
                    .args(format_args!("two\nlines"))
                    .build(),
            )
        };
        assert_eq!(
            line(log::Level::Error),
            "<3>ERROR [aquatic::server] two | lines\n"
        );
        assert!(line(log::Level::Warn).starts_with("<4>WARN "));
        assert!(line(log::Level::Info).starts_with("<6>INFO "));
        assert!(line(log::Level::Debug).starts_with("<7>DEBUG"));
        assert!(line(log::Level::Trace).starts_with("<7>TRACE"));
    }
}
