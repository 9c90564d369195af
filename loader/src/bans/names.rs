//! Jail names and ban reasons, each held once and named by a 4-byte index:
//! a million bans of a few jails carry a million small numbers, not a
//! million pointers to shared strings (16 bytes each) or copies.
use std::sync::Arc;

/// A name's index in `Names`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Name(u32);

#[derive(Debug, Default)]
pub struct Names {
    texts: Vec<Option<Arc<str>>>,
    index: foldhash::HashMap<Arc<str>, Name>,
    free: Vec<u32>,
}

impl Names {
    /// The index of `s`, made if new.
    pub fn id(&mut self, s: &str) -> Name {
        if let Some(&found) = self.index.get(s) {
            return found;
        }
        let text: Arc<str> = Arc::from(s);
        let name = match self.free.pop() {
            Some(i) => {
                self.texts[i as usize] = Some(text.clone());
                Name(i)
            }
            None => {
                self.texts.push(Some(text.clone()));
                Name(u32::try_from(self.texts.len() - 1).expect("fewer than 2^32 names"))
            }
        };
        self.index.insert(text, name);
        name
    }

    /// The index of `s`, if held.
    pub fn find(&self, s: &str) -> Option<Name> {
        self.index.get(s).copied()
    }

    /// The text of `name` (shared, for holders that outlive a ban).
    pub fn text(&self, name: Name) -> &Arc<str> {
        self.texts[name.0 as usize]
            .as_ref()
            .expect("a name in use is never let go")
    }

    /// Every name held.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.texts.iter().flatten().map(|t| &**t)
    }

    /// Lets go of the names `used` does not hold (reasons of bans long
    /// ended); their indices are given out again.
    pub fn retain_used(&mut self, used: impl Iterator<Item = Name>) {
        let mut keep = vec![false; self.texts.len()];
        for n in used {
            keep[n.0 as usize] = true;
        }
        for (i, text) in self.texts.iter_mut().enumerate() {
            if !keep[i] {
                if let Some(t) = text.take() {
                    self.index.remove(&t);
                    self.free.push(i as u32);
                }
            }
        }
    }
}

/// The names a run of saved bans named last, by their shared text: a
/// million restored bans of one jail hash its name twice, not two million
/// times.
#[derive(Default)]
pub struct Recent(Vec<(Arc<str>, Name)>);

impl Recent {
    pub fn id(&mut self, names: &mut Names, s: &Arc<str>) -> Name {
        if let Some((_, name)) = self.0.iter().find(|(t, _)| Arc::ptr_eq(t, s)) {
            return *name;
        }
        let name = names.id(s);
        if self.0.len() == 4 {
            self.0.remove(0);
        }
        self.0.push((s.clone(), name));
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_index_per_text_and_unused_indices_are_reused() {
        let mut names = Names::default();
        let a = names.id("freeswitch");
        let b = names.id("3 failures in 10m");
        assert_eq!(names.id("freeswitch"), a);
        assert_ne!(a, b);
        assert_eq!(&**names.text(b), "3 failures in 10m");
        names.retain_used([a].into_iter());
        assert_eq!(names.iter().collect::<Vec<_>>(), ["freeswitch"]);
        let c = names.id("manual");
        assert_eq!(c, b, "the freed index is given out again");
        assert_eq!(&**names.text(c), "manual");
        assert_eq!(&**names.text(a), "freeswitch");
    }
}
