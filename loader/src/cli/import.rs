//! `sipguard import-fail2ban [DIR]`: read a fail2ban configuration and print
//! (or write) the equivalent sipguard jails.
//!
//! Reads `jail.conf`, `jail.local`, `jail.d/*.conf`, `jail.d/*.local` (later
//! files override earlier ones key by key) and each jail's
//! `filter.d/NAME.conf` + `.local` with their `[INCLUDES]`, with `[DEFAULT]`,
//! `%(name)s` interpolation, multi-line values and `#`/`;` comments (whole
//! line, or inline after whitespace). Every filter is tried on real
//! FreeSWITCH lines; one that matches none (a common result of copying a
//! regex from a guide) is reported loudly and replaced by the built-in
//! `freeswitch` filter, with the original kept as a comment.
use crate::logs::filter::{self, Filter, Server};
use anyhow::{bail, Context as _, Result};
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// fail2ban's configuration folder.
    #[arg(default_value = "/etc/fail2ban")]
    pub dir: PathBuf,
    /// Write the result to this file instead of printing it.
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// Overwrite the --write file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Import disabled jails too.
    #[arg(long)]
    pub all: bool,
}

/// Sections of key/value pairs, in file order of sections.
pub type Ini = BTreeMap<String, BTreeMap<String, String>>;

/// Parses fail2ban's INI dialect into `into` (later values override).
pub fn parse_ini(text: &str, origin: &str, into: &mut Ini) -> Result<()> {
    let mut section: Option<String> = None;
    let mut key: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            // Continuation of the previous value.
            if let (Some(s), Some(k)) = (&section, &key) {
                let v = into
                    .get_mut(s)
                    .and_then(|m| m.get_mut(k))
                    .expect("key exists");
                v.push('\n');
                v.push_str(strip_inline_comment(trimmed));
                continue;
            }
            bail!("{origin}:{}: indented line outside a value", n + 1);
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = Some(name.trim().to_owned());
            into.entry(name.trim().to_owned()).or_default();
            key = None;
            continue;
        }
        let Some(sec) = &section else {
            bail!("{origin}:{}: a setting before any [section]", n + 1);
        };
        let Some(split) = trimmed.find(['=', ':']) else {
            bail!(
                "{origin}:{}: expected `key = value`, found {trimmed:?}",
                n + 1
            );
        };
        let k = trimmed[..split].trim().to_owned();
        let v = strip_inline_comment(trimmed[split + 1..].trim()).to_owned();
        into.get_mut(sec)
            .expect("section exists")
            .insert(k.clone(), v);
        key = Some(k);
    }
    Ok(())
}

/// `maxretry = 4 #comment` → `4`: a `#` or `;` after whitespace starts a comment.
fn strip_inline_comment(v: &str) -> &str {
    let bytes = v.as_bytes();
    for i in 1..bytes.len() {
        if (bytes[i] == b'#' || bytes[i] == b';') && bytes[i - 1].is_ascii_whitespace() {
            return v[..i].trim_end();
        }
    }
    v
}

/// Expands `%(name)s` from the section, then `[DEFAULT]`, then `extra`.
fn interpolate(
    ini: &Ini,
    section: &str,
    value: &str,
    extra: &BTreeMap<String, String>,
    depth: usize,
) -> Result<String> {
    if depth > 10 {
        bail!("interpolation loop in [{section}]: {value}");
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("%(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find(")s") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        let found = ini
            .get(section)
            .and_then(|s| s.get(name))
            .or_else(|| ini.get("DEFAULT").and_then(|s| s.get(name)))
            .or_else(|| extra.get(name))
            .with_context(|| format!("[{section}]: %({name})s is not defined"))?;
        out.push_str(&interpolate(ini, section, found, extra, depth + 1)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn read_into(path: &Path, ini: &mut Ini) -> Result<bool> {
    match std::fs::read(path) {
        Ok(bytes) => {
            parse_ini(
                &String::from_utf8_lossy(&bytes),
                &path.display().to_string(),
                ini,
            )?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn sorted_glob(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// The merged jail configuration of a fail2ban folder.
pub fn read_jails(dir: &Path) -> Result<Ini> {
    let mut ini = Ini::new();
    let mut found = false;
    for f in [dir.join("jail.conf"), dir.join("jail.local")] {
        found |= read_into(&f, &mut ini)?;
    }
    for ext in ["conf", "local"] {
        for f in sorted_glob(&dir.join("jail.d"), ext) {
            found |= read_into(&f, &mut ini)?;
        }
    }
    if !found {
        bail!(
            "no jail.conf, jail.local or jail.d/ in {}: is this fail2ban's configuration folder?",
            dir.display()
        );
    }
    Ok(ini)
}

/// A filter's `[Definition]` after includes and interpolation.
struct Fail2banFilter {
    failregex: Vec<String>,
    ignoreregex: Vec<String>,
}

fn read_filter(dir: &Path, name: &str, depth: usize) -> Result<Ini> {
    if depth > 5 {
        bail!("filter includes nest too deep at {name}");
    }
    let filter_dir = dir.join("filter.d");
    let mut own = Ini::new();
    let a = read_into(&filter_dir.join(format!("{name}.conf")), &mut own)?;
    let b = read_into(&filter_dir.join(format!("{name}.local")), &mut own)?;
    if !a && !b {
        bail!("filter '{name}' not found in {}", filter_dir.display());
    }
    let mut merged = Ini::new();
    let includes = own.get("INCLUDES").cloned().unwrap_or_default();
    for key in ["before", "after"] {
        for inc in includes
            .get(key)
            .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let inc = inc.trim_end_matches(".conf").trim_end_matches(".local");
            match read_filter(dir, inc, depth + 1) {
                Ok(inc_ini) if key == "before" => merge(&mut merged, inc_ini),
                Ok(inc_ini) => merge(&mut own, inc_ini),
                Err(e) => tracing::warn!("filter {name}: include {inc} skipped: {e:#}"),
            }
        }
    }
    merge(&mut merged, own);
    Ok(merged)
}

fn merge(into: &mut Ini, from: Ini) {
    for (s, kv) in from {
        into.entry(s).or_default().extend(kv);
    }
}

fn filter_definition(ini: &Ini, jail_vars: &BTreeMap<String, String>) -> Result<Fail2banFilter> {
    // Definition values may refer to [DEFAULT] and [Init] keys of the filter.
    let mut extra = ini.get("Init").cloned().unwrap_or_default();
    extra.extend(jail_vars.clone());
    let get = |key: &str| -> Result<Vec<String>> {
        let Some(v) = ini.get("Definition").and_then(|d| d.get(key)) else {
            return Ok(Vec::new());
        };
        let v = interpolate(ini, "Definition", v, &extra, 0)?;
        Ok(v.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    };
    Ok(Fail2banFilter {
        failregex: get("failregex")?,
        ignoreregex: get("ignoreregex")?,
    })
}

/// Python regex → Rust regex, for what fail2ban filters use: `\'` and `\"`
/// are plain quotes; `<HOST>` stays (ours). Anchors are kept, and a regex
/// without one is anchored after the FreeSWITCH line prefix, as fail2ban
/// anchors its own filters (`^%(__prefix_line)s`): failure text that only
/// appears inside another line must not count.
fn translate_regex(re: &str, server: Server) -> String {
    crate::logs::filter::anchored(&re.replace("\\'", "'").replace("\\\"", "\""), server)
}

/// `port = 5060,5066,7443` / `sip,sips` / `5060:5062` → port numbers.
fn parse_ports(v: &str, warnings: &mut Vec<String>) -> Vec<u16> {
    let mut out = Vec::new();
    for part in v
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let named = match part {
            "sip" => Some(5060),
            "sips" => Some(5061),
            _ => None,
        };
        if let Some(p) = named.or_else(|| part.parse().ok()) {
            out.push(p);
        } else if let Some((a, b)) = part.split_once(':') {
            match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) if a <= b && b - a < 1024 => out.extend(a..=b),
                _ => warnings.push(format!("port range {part:?} not understood: left out")),
            }
        } else {
            warnings.push(format!("port {part:?} not understood: left out"));
        }
    }
    out
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Builds the sipguard configuration; returns it with the warnings.
pub fn import(dir: &Path, all: bool) -> Result<(String, Vec<String>)> {
    let ini = read_jails(dir)?;
    let mut warnings = Vec::new();
    let mut out = format!(
        "# sipguard configuration imported from {} by `sipguard import-fail2ban`.\n",
        dir.display()
    );
    let mut imported = 0;
    for (name, section) in ini
        .iter()
        .filter(|(n, _)| *n != "DEFAULT" && *n != "INCLUDES")
    {
        let get = |key: &str| -> Result<Option<String>> {
            match section
                .get(key)
                .or_else(|| ini.get("DEFAULT").and_then(|d| d.get(key)))
            {
                None => Ok(None),
                Some(v) => Ok(Some(interpolate(&ini, name, v, &BTreeMap::new(), 0)?)),
            }
        };
        let enabled =
            get("enabled")?.is_some_and(|v| matches!(v.trim(), "true" | "yes" | "1" | "on"));
        if !enabled && !all {
            continue;
        }
        imported += 1;
        let _ = writeln!(out, "\n[jails.{}]", toml_str(name));
        if !enabled {
            out.push_str("enabled = false\n");
        }
        let logpath: Vec<String> = get("logpath")?
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if logpath.is_empty() {
            warnings.push(format!(
                "[{name}]: no logpath; using {}",
                crate::config::DEFAULT_LOG
            ));
        }
        let logs = if logpath.is_empty() {
            vec![crate::config::DEFAULT_LOG.to_owned()]
        } else {
            logpath
        };
        let _ = writeln!(
            out,
            "logpath = [{}]",
            logs.iter()
                .map(|l| toml_str(l))
                .collect::<Vec<_>>()
                .join(", ")
        );

        let filter_spec = get("filter")?.unwrap_or_else(|| name.clone());
        let (filter_name, mode) = match filter_spec.trim().split_once('[') {
            Some((n, opts)) => (n.trim().to_owned(), opts.trim_end_matches(']').to_owned()),
            None => (filter_spec.trim().to_owned(), String::new()),
        };
        out.push_str(&import_filter(
            dir,
            name,
            &filter_name,
            &mode,
            &mut warnings,
        ));

        for (key, ours) in [
            ("maxretry", "maxretry"),
            ("findtime", "findtime"),
            ("bantime", "bantime"),
        ] {
            if let Some(v) = get(key)? {
                let v = v.trim();
                match key {
                    "maxretry" => match v.parse::<u32>() {
                        Ok(n) => {
                            let _ = writeln!(out, "{ours} = {n}");
                        }
                        Err(_) => warnings.push(format!(
                            "[{name}]: maxretry {v:?} is not a number: left out"
                        )),
                    },
                    _ => match crate::duration::parse_bantime(v) {
                        Ok(_) if v.parse::<i64>().is_ok() => {
                            let _ = writeln!(out, "{ours} = {v}");
                        }
                        Ok(_) => {
                            let _ = writeln!(out, "{ours} = {}", toml_str(v));
                        }
                        Err(e) => warnings.push(format!("[{name}]: {key} {v:?}: {e:#}: left out")),
                    },
                }
            }
        }
        if get("bantime.increment")?.is_some_and(|v| v.trim() == "true") {
            out.push_str("bantime_increment = true\n");
            for (key, ours) in [
                ("bantime.factor", "bantime_factor"),
                ("bantime.maxtime", "bantime_maxtime"),
            ] {
                if let Some(v) = get(key)? {
                    let _ = writeln!(
                        out,
                        "{ours} = {}",
                        if key == "bantime.factor" {
                            v.trim().to_owned()
                        } else {
                            toml_str(v.trim())
                        }
                    );
                }
            }
        }
        let action =
            get("banaction")?.unwrap_or_default() + " " + &get("action")?.unwrap_or_default();
        if action.contains("allports") {
            out.push_str("ports = \"all\"\n");
        } else if let Some(p) = get("port")? {
            let ports = parse_ports(&p, &mut warnings);
            if !ports.is_empty() {
                let _ = writeln!(
                    out,
                    "ports = [{}]",
                    ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    if imported == 0 {
        warnings.push("no enabled jails found (use --all to import disabled ones)".into());
    }
    // What we print must load.
    crate::config::Config::parse(&out, "the imported configuration")
        .context("internal error: the import does not parse")?;
    Ok((out, warnings))
}

/// The TOML lines for a jail's filter.
fn import_filter(
    dir: &Path,
    jail: &str,
    name: &str,
    mode: &str,
    warnings: &mut Vec<String>,
) -> String {
    let server = Server::of_filter(name);
    let builtin_for_mode = match server {
        Server::FreeSwitch if mode.contains("ddos") => "freeswitch-challenge",
        other => other.builtin_filter(),
    };
    let def = read_filter(dir, name, 0).and_then(|ini| filter_definition(&ini, &BTreeMap::new()));
    let def = match def {
        Ok(d) if !d.failregex.is_empty() => d,
        Ok(_) | Err(_) if name == "freeswitch" || name == "asterisk" => {
            // fail2ban's stock filter, not shipped in this folder.
            return format!(
                "filter = {}  # fail2ban's own '{name}' filter\n",
                toml_str(builtin_for_mode)
            );
        }
        Ok(_) => {
            warnings.push(format!(
                "[{jail}]: filter '{name}' has no failregex; using the built-in {builtin_for_mode} filter"
            ));
            return format!("filter = {}\n", toml_str(builtin_for_mode));
        }
        Err(e) => {
            warnings.push(format!(
                "[{jail}]: {e:#}; using the built-in {builtin_for_mode} filter"
            ));
            return format!("filter = {}\n", toml_str(builtin_for_mode));
        }
    };
    let translated: Vec<String> = def
        .failregex
        .iter()
        .map(|r| translate_regex(r, server))
        .collect();
    let ignore: Vec<String> = def
        .ignoreregex
        .iter()
        .map(|r| translate_regex(r, server))
        .collect();
    let real = server.real_lines().len();
    let who = server.name();
    let original = def
        .failregex
        .iter()
        .map(|r| format!("#   {r}\n"))
        .collect::<String>();
    match Filter::new(&translated, &ignore) {
        Ok(f) if filter::real_lines_matched(&f, server) > 0 => {
            let n = filter::real_lines_matched(&f, server);
            if n < real {
                warnings.push(format!(
                    "[{jail}]: filter '{name}' matches only {n} of {real} real {who} failure shapes; the built-in '{builtin_for_mode}' matches all"
                ));
            }
            let mut s = format!(
                "failregex = [{}]\n",
                translated
                    .iter()
                    .map(|r| toml_str(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !ignore.is_empty() {
                let _ = writeln!(
                    s,
                    "ignoreregex = [{}]",
                    ignore
                        .iter()
                        .map(|r| toml_str(r))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            s
        }
        Ok(_) => {
            warnings.push(format!(
                "[{jail}]: WARNING: filter '{name}' MATCHES NO REAL {} LINE, so this jail has never banned anyone. \
                 Its failregex is replaced by the built-in '{builtin_for_mode}' filter (the original is kept as a comment). \
                 Original: {}",
                who.to_uppercase(),
                def.failregex.join(" | ")
            ));
            format!(
                "# The imported failregex matched no real {who} line and was replaced:\n{original}filter = {}\n",
                toml_str(builtin_for_mode)
            )
        }
        Err(e) => {
            warnings.push(format!(
                "[{jail}]: WARNING: filter '{name}' cannot be used ({e:#}); replaced by the built-in '{builtin_for_mode}' filter"
            ));
            format!("# The imported failregex could not be used and was replaced:\n{original}filter = {}\n", toml_str(builtin_for_mode))
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    let (toml, warnings) = import(&args.dir, args.all)?;
    for w in &warnings {
        eprintln!("import-fail2ban: {}", crate::text::escape(w));
    }
    match &args.write {
        None => print!("{toml}"),
        Some(path) => {
            if path.exists() && !args.force {
                bail!("{} exists: use --force to overwrite it", path.display());
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_private(path, &toml)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("import-fail2ban: wrote {}", path.display());
        }
    }
    Ok(())
}

/// Writes `text` to `path` readable by its owner only (0600): the config
/// may hold secrets (a webhook's token, a fleet password). Written beside it
/// and renamed over it, so a file already there with a wider mode is
/// replaced, not kept.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Ports};

    #[test]
    fn the_written_config_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "f2b/jail.local",
            "[freeswitch]\nenabled = true\nlogpath = /var/log/freeswitch.log\n",
        );
        let out = dir.path().join("sipguard.toml");
        // One already there, world-readable: --force replaces it, 0600.
        std::fs::write(&out, "old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
        let args = Args {
            dir: dir.path().join("f2b"),
            write: Some(out.clone()),
            force: true,
            all: false,
        };
        run(&args).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::read_to_string(&out)
            .unwrap()
            .contains("freeswitch"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
        std::fs::remove_file(&out).unwrap();
        run(&args).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn ini_dialect() {
        let mut ini = Ini::new();
        parse_ini(
            "# comment\n[DEFAULT]\nbantime = 600 ; ten minutes\n[a]\nmaxretry = 4 #comment\nurl = http://x/#frag\nfailregex = one\n            two\n\n; c\nk: v\n",
            "t",
            &mut ini,
        )
        .unwrap();
        assert_eq!(ini["DEFAULT"]["bantime"], "600");
        assert_eq!(ini["a"]["maxretry"], "4");
        assert_eq!(
            ini["a"]["url"], "http://x/#frag",
            "a # without whitespace before it is not a comment"
        );
        assert_eq!(ini["a"]["failregex"], "one\ntwo");
        assert_eq!(ini["a"]["k"], "v");
        assert!(parse_ini("key = 1\n", "t", &mut Ini::new())
            .unwrap_err()
            .to_string()
            .contains("t:1"));
    }

    /// The jail and filter most FreeSWITCH + fail2ban guides give, verbatim
    /// in spirit: a custom filter.d/freeswitch.conf whose regex uses a
    /// character class instead of a group and `sofiaprofile` without a space.
    #[test]
    fn the_guides_configuration_imports_and_its_broken_filter_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "jail.conf", "[DEFAULT]\nbantime = 600\nfindtime = 600\nmaxretry = 5\n\n[sshd]\nenabled = true\nlogpath = /var/log/auth.log\n");
        write(
            d,
            "jail.local",
            "[freeswitch-auth]\nenabled = true\nport = 5060,5066,7443\nprotocol = udp\nfilter = freeswitch\nlogpath = /usr/local/freeswitch/log/freeswitch.log\nmaxretry = 50\nfindtime = 30\nbantime = 6000\naction = iptables-allports[name=freeswitch-auth, protocol=all]\n\n[sshd]\nenabled = false\n",
        );
        write(
            d,
            "jail.d/freeswitch.local",
            "[freeswitch-ip]\nenabled = true\nport = 5060,5066,7443\nfilter = freeswitch-ip\nlogpath = /var/log/freeswitch/freeswitch.log\n   /var/log/freeswitch/freeswitch.log.1\nmaxretry = 4 #comment\nbantime = -1\n",
        );
        write(
            d,
            "filter.d/freeswitch.conf",
            "[Definition]\nfailregex = SIP auth failure \\((?:[REGISTER|INVITE])\\) on sofiaprofile \\'[^']+\\' for \\[.*\\] from ip <HOST>\n            Can't find user \\[.*@.*\\] from ip <HOST>\nignoreregex =\n",
        );
        write(
            d,
            "filter.d/freeswitch-ip.conf",
            "[INCLUDES]\nbefore = common.conf\n[Definition]\n_pre = \\[WARNING\\] sofia_reg\\.c:\\d+\nfailregex = %(_pre)s SIP auth failure \\(REGISTER\\) on sofia profile \\'\\w+\\' for \\[.*\\] from ip <HOST>$\n",
        );
        let (toml, warnings) = import(d, false).unwrap();
        let all = warnings.join("\n");
        assert!(
            all.contains("[freeswitch-auth]") && all.contains("MATCHES NO REAL FREESWITCH LINE"),
            "{all}"
        );
        assert!(
            all.contains("[freeswitch-ip]") && all.contains("matches only"),
            "{all}"
        );
        let c = Config::parse(&toml, "imported").unwrap();
        assert!(!c.jails.contains_key("sshd"), "disabled in jail.local");
        let auth = &c.jails["freeswitch-auth"];
        assert_eq!(
            (
                auth.maxretry,
                auth.findtime.as_secs(),
                auth.bantime.map(|d| d.as_secs())
            ),
            (50, 30, Some(6000))
        );
        assert_eq!(
            auth.filter.as_deref(),
            Some("freeswitch"),
            "broken filter replaced by the built-in"
        );
        assert_eq!(auth.ports, Some(Ports::All), "iptables-allports");
        assert!(
            toml.contains("sofiaprofile"),
            "the original regex is kept as a comment:\n{toml}"
        );
        let ip = &c.jails["freeswitch-ip"];
        assert_eq!((ip.maxretry, ip.bantime), (4, None));
        assert_eq!(ip.logpath.len(), 2, "multi-line logpath");
        assert_eq!(ip.ports, Some(Ports::List(vec![5060, 5066, 7443])));
        assert_eq!(ip.failregex.len(), 1, "a working custom filter is kept");
        assert!(
            ip.failregex[0].contains(" )?\\[WARNING\\] sofia_reg"),
            "%(_pre)s interpolated: {:?}",
            ip.failregex
        );
        assert!(
            ip.failregex[0].starts_with(crate::logs::filter::LINE_START.as_str()),
            "anchored after the FreeSWITCH prefix: {:?}",
            ip.failregex
        );
        // Anchored, it counts real lines and not the same text inside another.
        let f = crate::logs::filter::Filter::new(&ip.failregex, &[]).unwrap();
        let real = "2024-03-01 12:00:00.1 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u@d] from ip 192.0.2.1";
        assert!(matches!(
            f.check(real),
            crate::logs::filter::Outcome::Hit { .. }
        ));
        let injected = format!("User-Agent: {real}");
        assert_eq!(f.check(&injected), crate::logs::filter::Outcome::Miss);
    }

    #[test]
    fn fail2bans_stock_filter_maps_to_the_builtin_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "jail.local", "[freeswitch]\nenabled = true\nlogpath = /var/log/freeswitch.log\n[freeswitch-ddos]\nenabled = true\nfilter = freeswitch[mode=ddos]\nlogpath = /var/log/freeswitch.log\n");
        let (toml, _) = import(dir.path(), false).unwrap();
        let c = Config::parse(&toml, "imported").unwrap();
        assert_eq!(c.jails["freeswitch"].filter.as_deref(), Some("freeswitch"));
        assert_eq!(
            c.jails["freeswitch-ddos"].filter.as_deref(),
            Some("freeswitch-challenge")
        );
    }

    /// fail2ban's stock asterisk jail becomes the built-in asterisk filter;
    /// a custom kamailio filter is kept (anchored after Kamailio's script
    /// prefix) when it matches real Kamailio lines, and one that matches
    /// none is replaced by the built-in kamailio filter.
    #[test]
    fn asterisk_and_kamailio_jails() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "jail.local", "[asterisk]\nenabled = true\nlogpath = /var/log/asterisk/messages\n[kamailio]\nenabled = true\nfilter = kamailio\nlogpath = /var/log/kamailio.log\n[kamailio-old]\nenabled = true\nfilter = kamailio-old\nlogpath = /var/log/kamailio.log\n");
        write(
            dir.path(),
            "filter.d/kamailio.conf",
            "[Definition]\nfailregex = pike blocking \\S+ from .* \\(IP:<HOST>:\\d+\\)$\n",
        );
        write(
            dir.path(),
            "filter.d/kamailio-old.conf",
            "[Definition]\nfailregex = ^SOMETHING ELSE <HOST>$\n",
        );
        let (toml, warnings) = import(dir.path(), false).unwrap();
        let c = Config::parse(&toml, "imported").unwrap();
        assert_eq!(c.jails["asterisk"].filter.as_deref(), Some("asterisk"));
        let k = &c.jails["kamailio"];
        assert!(
            k.filter.is_none() && k.failregex[0].contains("<script>"),
            "{k:?}"
        );
        let f = crate::logs::filter::Filter::new(&k.failregex, &[]).unwrap();
        assert!(matches!(
            f.check(crate::logs::filter::KAMAILIO_FAILURE_LINES[0]),
            crate::logs::filter::Outcome::Hit { .. }
        ));
        assert_eq!(c.jails["kamailio-old"].filter.as_deref(), Some("kamailio"));
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("MATCHES NO REAL KAMAILIO LINE")),
            "{warnings:?}"
        );
    }

    #[test]
    fn not_a_fail2ban_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(import(dir.path(), false)
            .unwrap_err()
            .to_string()
            .contains("is this fail2ban"));
    }
}
