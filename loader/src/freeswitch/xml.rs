//! Reading FreeSWITCH's XML as its `X-PRE-PROCESS` does: `set` and
//! `include` applied in order, every other tag kept with its attributes
//! expanded.
use super::walk::*;
use regex::Regex;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::LazyLock,
};

/// One tag: its name and attributes, and whether it closes.
#[derive(Clone, Debug)]
pub(super) struct Tag {
    pub(super) name: String,
    pub(super) closing: bool,
    pub(super) attrs: Vec<(String, String)>,
    /// Shared by all the file's tags.
    pub(super) file: std::rc::Rc<Path>,
}

impl Tag {
    pub(super) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

static COMMENT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?s)<!--.*?-->").expect("valid"));
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<(/?)([A-Za-z][\w.-]*)([^>]*)>").expect("valid"));
static ATTR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"([\w.-]+)\s*=\s*"([^"]*)""#).expect("valid"));
static VAR: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\$\$\{([^}]*)\}").expect("valid"));

/// Reads `file`, applying `X-PRE-PROCESS` `set` and `include` in order,
/// and appends its other tags (attributes expanded) to `out`.
pub(super) fn read_tree(
    file: &Path,
    conf: &Path,
    depth: usize,
    vars: &mut BTreeMap<String, String>,
    out: &mut Vec<Tag>,
    warnings: &mut Vec<String>,
    budget: &mut Budget,
) {
    if !budget.take_file(file, warnings) {
        return;
    }
    if depth > MAX_DEPTH {
        warnings.push(format!("{}: includes nested too deep", shown(file)));
        return;
    }
    let Some(text) = read_file(file, depth, budget, warnings) else {
        return;
    };
    let text = COMMENT.replace_all(&text, "");
    let shared: std::rc::Rc<Path> = file.into();
    for cap in TAG.captures_iter(&text) {
        let name = cap[2].to_owned();
        let mut attrs = Vec::new();
        for a in ATTR.captures_iter(&cap[3]) {
            let value = expand(&a[2], vars);
            // Every expanded value is held (as a tag's or a variable's).
            if !budget.hold(a[1].len() + value.len(), file, warnings) {
                return;
            }
            attrs.push((a[1].to_owned(), value));
        }
        if !budget.hold(name.len() + TAG_OVERHEAD, file, warnings) {
            return;
        }
        let tag = Tag {
            name,
            closing: &cap[1] == "/",
            attrs,
            file: shared.clone(),
        };
        if tag.name != "X-PRE-PROCESS" {
            out.push(tag);
            continue;
        }
        let (cmd, data) = (
            tag.attr("cmd").unwrap_or(""),
            tag.attr("data").unwrap_or(""),
        );
        match cmd {
            "set" | "stun-set" => {
                if let Some((k, v)) = data.split_once('=') {
                    vars.insert(k.trim().to_owned(), v.to_owned());
                }
            }
            "include" => {
                let pattern = if Path::new(data).is_absolute() {
                    PathBuf::from(data)
                } else {
                    file.parent().unwrap_or(conf).join(data)
                };
                if budget.spent || budget.files == 0 {
                    budget.take_file(&pattern, warnings);
                    return;
                }
                for f in glob_sorted(&pattern, budget, warnings) {
                    read_tree(&f, conf, depth + 1, vars, out, warnings, budget);
                }
            }
            _ => {}
        }
    }
}

/// `$${name}` replaced by its value (unknown ones are left as they are),
/// at most `MAX_VALUE` bytes of it.
pub(super) fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut last = 0;
    for c in VAR.captures_iter(value) {
        let whole = c.get(0).expect("a match");
        out.push_str(&value[last..whole.start()]);
        out.push_str(vars.get(&c[1]).map_or(whole.as_str(), String::as_str));
        last = whole.end();
        if out.len() > MAX_VALUE {
            break;
        }
    }
    if out.len() <= MAX_VALUE {
        out.push_str(&value[last..]);
    }
    crate::text::bounded(&out, MAX_VALUE).to_owned()
}
