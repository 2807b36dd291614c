//! `--check-config FILE`: everything wrong with a config file at once, each
//! problem with its key, without opening a socket (what `nginx -t` and
//! `haproxy -c` do, and what the systemd unit runs before a start and a
//! reload).
//!
//! ```text
//!   text ─> TOML table ─> unknown keys (walked, all of them)
//!                      └> the rest deserialized ─> Config::validate (every problem)
//!                                                └> named files readable and loadable
//! ```
//!
//! serde stops at the first unknown key, so the table is walked against
//! the default tree first; the unknown keys are then left out so the
//! values can still be deserialized and validated in the same run.

use std::path::Path;

use aquatic_common::access_list::{AccessList, AccessListMode};

use crate::config::{Config, ValidConfig};

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The dotted key it concerns (several keys comma-separated); empty for
    /// the file as a whole (unreadable, not TOML).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Checks the file at `path`: the valid configuration, or every finding.
pub fn check_file(path: &Path) -> Result<ValidConfig, Vec<Finding>> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![Finding {
            key: String::new(),
            message: format!("cannot read the file: {err}"),
        }]
    })?;
    let config = check_text(&text)?;
    let findings = check_files(&config);
    if findings.is_empty() {
        Ok(config)
    } else {
        Err(findings)
    }
}

/// Parses and validates `text`; named files are not looked at.
pub fn check_text(text: &str) -> Result<ValidConfig, Vec<Finding>> {
    let mut table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        vec![Finding {
            key: String::new(),
            message: format!("not valid TOML: {}", err.to_string().trim_end()),
        }]
    })?;
    let unknown = unknown_keys(&table);
    let mut findings: Vec<Finding> = unknown
        .iter()
        .map(|key| Finding {
            key: key.clone(),
            message: "unknown key".to_owned(),
        })
        .collect();
    // Without its unknown keys the rest of the file can still be read;
    // the original text otherwise, for toml's line numbers.
    let parsed: Result<Config, toml::de::Error> = if unknown.is_empty() {
        toml::from_str(text)
    } else {
        for key in &unknown {
            remove_key(&mut table, key);
        }
        toml::Table::try_into(table)
    };
    match parsed {
        Err(err) => findings.push(Finding {
            key: String::new(),
            message: err.to_string().trim_end().replace('\n', " "),
        }),
        Ok(config) => match config.validate() {
            Ok(valid) if findings.is_empty() => return Ok(valid),
            Ok(_) => {}
            Err(problems) => findings.extend(problems.into_iter().map(|p| Finding {
                key: p.key.to_owned(),
                message: p.reason.to_string(),
            })),
        },
    }
    Err(findings)
}

/// Every key of `table` (dotted) that the configuration tree does not
/// have, sorted (toml's tables are ordered maps).
///
/// The tree is the serialized defaults: every table and key the runtime
/// reads is there. A table the defaults hold as an empty array or map (a
/// list whose entries are tables) is not walked into.
pub fn unknown_keys(table: &toml::Table) -> Vec<String> {
    let defaults = match toml::Table::try_from(Config::default()) {
        Ok(defaults) => defaults,
        // Serializing the defaults cannot fail (a unit test checks it);
        // with no tree there is nothing to compare with.
        Err(_) => return Vec::new(),
    };
    let mut unknown = Vec::new();
    walk(table, &defaults, "", &mut unknown);
    unknown
}

fn walk(table: &toml::Table, known: &toml::Table, prefix: &str, unknown: &mut Vec<String>) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (known.get(key), value) {
            (None, _) => unknown.push(dotted),
            (Some(toml::Value::Table(known)), toml::Value::Table(table)) if !known.is_empty() => {
                walk(table, known, &dotted, unknown)
            }
            _ => {}
        }
    }
}

fn remove_key(table: &mut toml::Table, dotted: &str) {
    match dotted.split_once('.') {
        None => {
            table.remove(dotted);
        }
        Some((head, rest)) => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(head) {
                remove_key(inner, rest);
            }
        }
    }
}

/// The files a valid configuration names that cannot be read or loaded:
/// the access list, and the certificate and key of each enabled TLS
/// listener.
pub fn check_files(config: &ValidConfig) -> Vec<Finding> {
    let mut findings = Vec::new();
    if config.access_list.mode != AccessListMode::Off {
        if let Err(err) = AccessList::load(config.access_list.mode, &config.access_list.path) {
            findings.push(Finding {
                key: "access_list.path".to_owned(),
                message: err.to_string(),
            });
        }
    }
    let listeners = [
        (
            "http",
            config.http.enabled && config.http.tls(),
            &config.http.tls_certificate_path,
            &config.http.tls_private_key_path,
        ),
        (
            "ws",
            config.ws.enabled && config.ws.tls(),
            &config.ws.tls_certificate_path,
            &config.ws.tls_private_key_path,
        ),
    ];
    for (table, tls, certificate, key) in listeners {
        if !tls {
            continue;
        }
        let mut readable = true;
        for (name, path) in [
            ("tls_certificate_path", certificate),
            ("tls_private_key_path", key),
        ] {
            if let Err(err) = std::fs::File::open(path) {
                readable = false;
                findings.push(Finding {
                    key: format!("{table}.{name}"),
                    message: format!("cannot read {}: {err}", path.display()),
                });
            }
        }
        if readable {
            if let Err(err) = aquatic_common::tls::load_server_config(certificate, key, &[]) {
                findings.push(Finding {
                    key: format!("{table}.tls_certificate_path, {table}.tls_private_key_path"),
                    message: err.to_string(),
                });
            }
        }
    }
    findings
}

/// `path`'s findings as the CLI prints them: one `path: key: message` line
/// each, as compilers do.
pub fn report(path: &Path, findings: &[Finding]) -> String {
    let mut text = String::new();
    for finding in findings {
        text.push_str(&format!("{}: {finding}\n", path.display()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        match check_text(text) {
            Ok(_) => Vec::new(),
            Err(findings) => findings.into_iter().map(|f| f.key).collect(),
        }
    }

    #[test]
    fn defaults_and_the_embedded_file_pass() {
        assert!(check_text("").is_ok());
        assert!(check_text(crate::config::DEFAULT_CONFIG_TOML).is_ok());
    }

    #[test]
    fn every_unknown_key_is_listed_then_the_values_are_checked() {
        let text = "wrokers = 2\n[udp]\nadress = \"[::]:1\"\n[tracker]\nmax_numwant = 5000\n\
                    announce_interval = 5\n[nonsense]\nx = 1\n[ws]\nmax_offers = 0\n";
        assert_eq!(
            keys(text),
            [
                "nonsense",
                "tracker.announce_interval",
                "udp.adress",
                "wrokers",
                "tracker.max_numwant",
                "ws.max_offers",
            ]
        );
        let findings = check_text(text).expect_err("invalid");
        assert_eq!(findings[3].to_string(), "wrokers: unknown key");
    }

    #[test]
    fn a_wrong_type_is_reported_with_the_unknown_keys() {
        let findings = check_text("[udp]\nadress = 1\nenabled = \"yes\"\n").expect_err("invalid");
        assert_eq!(findings[0].key, "udp.adress");
        assert!(findings[1].message.contains("enabled"), "{findings:?}");
    }

    #[test]
    fn not_toml() {
        let findings = check_text("[udp\n").expect_err("invalid");
        assert!(
            findings[0].message.starts_with("not valid TOML"),
            "{findings:?}"
        );
    }

    #[test]
    fn named_files_must_load() {
        let config = check_text(
            "[access_list]\nmode = \"allow\"\npath = \"/nonexistent/list\"\n\
             [http]\ntls_certificate_path = \"/nonexistent/c.pem\"\n\
             tls_private_key_path = \"/nonexistent/k.pem\"\n\
             [ws]\ntls_certificate_path = \"/nonexistent/c.pem\"\n\
             tls_private_key_path = \"/nonexistent/k.pem\"\nenabled = false\n",
        )
        .expect("valid values");
        let keys: Vec<String> = check_files(&config).into_iter().map(|f| f.key).collect();
        assert_eq!(
            keys,
            [
                "access_list.path",
                "http.tls_certificate_path",
                "http.tls_private_key_path"
            ]
        );
    }
}
