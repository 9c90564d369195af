//! Reading FreeSWITCH's XML as its `X-PRE-PROCESS` does: `set` and
//! `include` applied in order, every other tag kept with its attributes
//! expanded. A real parser (quick-xml, which takes fragments), not
//! patterns: quoting either way, entities, `>` in a value, CDATA and
//! comments (with the tags written in them) all read as FreeSWITCH does.
use super::walk::*;
use quick_xml::{
    events::{BytesStart, Event},
    Reader, XmlVersion,
};
use regex::Regex;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    rc::Rc,
    sync::LazyLock,
};

/// One tag: its name and attributes, and whether it closes.
#[derive(Clone, Debug)]
pub(super) struct Tag {
    pub(super) name: String,
    pub(super) closing: bool,
    pub(super) attrs: Vec<(String, String)>,
    /// Shared by all the file's tags.
    pub(super) file: Rc<Path>,
}

impl Tag {
    pub(super) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

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
    Walk {
        conf,
        vars,
        out,
        warnings,
        budget,
    }
    .file(file, depth);
}

/// One discovery's reading, across the files an include leads to.
struct Walk<'a> {
    conf: &'a Path,
    vars: &'a mut BTreeMap<String, String>,
    out: &'a mut Vec<Tag>,
    warnings: &'a mut Vec<String>,
    budget: &'a mut Budget,
}

/// A parser for what FreeSWITCH's files are: fragments. An included file
/// may hold many roots, or close what the file including it opened; a
/// stray `&` in text is FreeSWITCH's problem, not discovery's.
fn fragment_reader(text: &str) -> Reader<&[u8]> {
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    config.allow_dangling_amp = true;
    // `<gateway name="g"/>` opens and closes, as `<gateway ...></gateway>`.
    config.expand_empty_elements = true;
    reader
}

impl Walk<'_> {
    fn file(&mut self, file: &Path, depth: usize) {
        if !self.budget.take_file(file, self.warnings) {
            return;
        }
        if depth > MAX_DEPTH {
            self.warnings
                .push(format!("{}: includes nested too deep", shown(file)));
            return;
        }
        let Some(text) = read_file(file, depth, self.budget, self.warnings) else {
            return;
        };
        let shared: Rc<Path> = file.into();
        let mut reader = fragment_reader(&text);
        loop {
            // Text, CDATA and comments (with any tags written in them) are
            // not configuration.
            let (start, closing) = match reader.read_event() {
                Ok(Event::Start(e)) => (e, false),
                // A closing tag is its name alone: no attributes to read.
                Ok(Event::End(e)) => (BytesStart::new(e.name().as_ref().to_owned()), true),
                Ok(Event::Eof) => return,
                Ok(_) => continue,
                Err(e) => {
                    // What came before the error stands; the rest cannot be
                    // told apart from text.
                    self.warnings.push(format!(
                        "{}: not XML from byte {} on ({}): the rest is not read",
                        shown(file),
                        reader.error_position(),
                        crate::text::escape(&e.to_string())
                    ));
                    return;
                }
            };
            let Some(tag) = self.tag(&start, closing, &shared) else {
                return;
            };
            if tag.name != "X-PRE-PROCESS" {
                self.out.push(tag);
            } else if !closing && !self.preprocess(&tag, file, depth) {
                return;
            }
        }
    }

    /// The tag with its attributes expanded; `None` once the walk holds
    /// all the expanded text it may.
    fn tag(&mut self, start: &BytesStart, closing: bool, file: &Rc<Path>) -> Option<Tag> {
        let mut attrs = Vec::new();
        // Unquoted values and the like end the attributes, not the file.
        for a in start.attributes().with_checks(false).map_while(Result::ok) {
            let key = a.key.as_ref().to_owned();
            // An unknown entity or a bare `&` is kept as written.
            let raw = a
                .normalized_value(XmlVersion::Implicit1_0)
                .unwrap_or_else(|_| a.value.clone());
            let value = expand(&raw, self.vars);
            // Every expanded value is held (as a tag's or a variable's).
            if !self
                .budget
                .hold(key.len() + value.len(), file, self.warnings)
            {
                return None;
            }
            attrs.push((key, value));
        }
        let name = start.name().as_ref().to_owned();
        if !self
            .budget
            .hold(name.len() + TAG_OVERHEAD, file, self.warnings)
        {
            return None;
        }
        Some(Tag {
            name,
            closing,
            attrs,
            file: file.clone(),
        })
    }

    /// Applies an `X-PRE-PROCESS` of `file`: false when the walk ends here.
    fn preprocess(&mut self, tag: &Tag, file: &Path, depth: usize) -> bool {
        let (cmd, data) = (
            tag.attr("cmd").unwrap_or(""),
            tag.attr("data").unwrap_or(""),
        );
        match cmd {
            "set" | "stun-set" => {
                if let Some((k, v)) = data.split_once('=') {
                    self.vars.insert(k.trim().to_owned(), v.to_owned());
                }
            }
            "include" => {
                let pattern = if Path::new(data).is_absolute() {
                    PathBuf::from(data)
                } else {
                    file.parent().unwrap_or(self.conf).join(data)
                };
                if self.budget.spent || self.budget.files == 0 {
                    self.budget.take_file(&pattern, self.warnings);
                    return false;
                }
                for f in glob_sorted(&pattern, self.budget, self.warnings) {
                    self.file(&f, depth + 1);
                }
            }
            _ => {}
        }
        true
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
