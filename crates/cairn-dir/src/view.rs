//! What a listing shows: one name per value, conflicts made visible.
//!
//! Each live entry shows under its name (the latest of concurrent renames). When its content
//! holds concurrent values, the latest keeps the name and each other shows as
//! `name.conflict-<writer>-<time>` (writer: first 8 hex characters of its node id; time: UTC,
//! `YYYYMMDDTHHMMSSZ`). When two entries share a name (created concurrently), the one written
//! last keeps it and the others get conflict names the same way. Nothing is hidden.

use std::borrow::Cow;
use std::collections::HashSet;

use cairn_core::NodeId;

use crate::content::{Content, Move, MoveMark};
use crate::context::Dot;
use crate::hlc::Hlc;
use crate::state::{DirState, EntryId};

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The name shown (a conflict name for a conflict copy).
    pub name: String,
    /// The entry it comes from.
    pub id: EntryId,
    /// The dot of the content value shown.
    pub dot: Dot,
    /// The value shown.
    pub content: Content,
    /// When that value was written (the entry's ctime).
    pub changed: Hlc,
    /// Whether this line takes part in a conflict (the name holder or a copy).
    pub conflict: bool,
}

/// A directory as shown: lines sorted by name, names unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The lines.
    pub entries: Vec<Listed>,
}

/// The conflict name for a value of `name` written by `writer` at `hlc`.
pub fn conflict_name(name: &str, writer: &NodeId, hlc: Hlc) -> String {
    let short: String = writer.fmt_short().chars().take(8).collect();
    format!("{name}.conflict-{short}-{}", utc_stamp(hlc.millis))
}

/// `YYYYMMDDTHHMMSSZ` for milliseconds since the epoch.
fn utc_stamp(millis: u64) -> String {
    let secs = millis / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `YYYY-MM-DD HH:MM` (UTC) for milliseconds since the epoch, for listings.
pub fn utc_minutes(millis: u64) -> String {
    let secs = millis / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// How a value shows: a directory that moved away hides (unless the move was cancelled), one
/// that arrived by a cancelled move hides; marks are dropped from what shows.
fn shown_content<'a>(
    value: &'a Content,
    cancelled: &dyn Fn(&Move) -> bool,
) -> Option<Cow<'a, Content>> {
    match value.move_mark() {
        None => Some(Cow::Borrowed(value)),
        Some(MoveMark::Out(m)) if !cancelled(m) => None,
        Some(MoveMark::In(m)) if cancelled(m) => None,
        Some(_) => Some(Cow::Owned(value.without_move_mark())),
    }
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The name an entry shows under before conflicts are sorted out: its latest name, or
/// `unnamed-<id>` when it has none or the name is not a valid one (another writer's bytes are
/// not trusted to be a safe file name).
fn shown_name(id: EntryId, entry: &crate::state::Entry) -> String {
    match entry.name.winner() {
        Some((_, name)) if crate::name::check_name(&name.value).is_ok() => name.value.clone(),
        _ => format!("unnamed-{}", id.fmt_short()),
    }
}

impl Listing {
    /// The line named `name` in the listing of `state`, without building the whole listing
    /// when the name is held by one entry with one value (the common case).
    pub fn lookup(state: &DirState, name: &str) -> Option<Listed> {
        Listing::lookup_with(state, name, &|_| false)
    }

    /// [`lookup`](Self::lookup) with the moves `cancelled` says were undone (see
    /// [`of_with`](Self::of_with)).
    pub fn lookup_with(
        state: &DirState,
        name: &str,
        cancelled: &dyn Fn(&Move) -> bool,
    ) -> Option<Listed> {
        Listing::plain_line(state, name, cancelled)
            .unwrap_or_else(|| Listing::of_with(state, cancelled).get(name).cloned())
    }

    /// The line named `name` when it takes no part in a conflict, told without building the
    /// whole listing: `Some(None)` when nothing shows under that name, `Some(Some(line))` when
    /// one entry with one name and one value holds it. `None` when only the whole listing can
    /// tell (a conflict, or a conflict or `unnamed-` name).
    pub fn plain_line(
        state: &DirState,
        name: &str,
        cancelled: &dyn Fn(&Move) -> bool,
    ) -> Option<Option<Listed>> {
        if name.contains(".conflict-") || name.starts_with("unnamed-") {
            return None;
        }
        let holds = |entry: &crate::state::Entry| {
            entry.is_alive() && entry.name.winner().is_some_and(|(_, n)| n.value == name)
        };
        let found: Vec<(&EntryId, &crate::state::Entry)> = match state.name_candidates(name) {
            Some(ids) => ids
                .iter()
                .filter_map(|id| state.entries.get_key_value(id))
                .filter(|(_, entry)| holds(entry))
                .collect(),
            None => state.entries.iter().filter(|(_, e)| holds(e)).collect(),
        };
        let [(id, entry)] = found[..] else {
            return found.is_empty().then_some(None);
        };
        let mut values = entry.content.0.iter();
        let (Some((dot, first)), None) = (values.next(), values.next()) else {
            return None;
        };
        if entry.name.0.len() != 1 {
            return None;
        }
        Some(
            shown_content(&first.value, cancelled).map(|content| Listed {
                name: name.to_owned(),
                id: *id,
                dot: *dot,
                content: content.into_owned(),
                changed: first.hlc,
                conflict: false,
            }),
        )
    }

    /// The listing of `state`, every move taken as done.
    pub fn of(state: &DirState) -> Listing {
        Listing::of_with(state, &|_| false)
    }

    /// The listing of `state`. A subdirectory that left by a move hides, and one that arrived
    /// by a move shows, unless `cancelled` says the move was undone (it would have put a
    /// directory inside itself): then the reverse.
    pub fn of_with(state: &DirState, cancelled: &dyn Fn(&Move) -> bool) -> Listing {
        let mut lines: Vec<Listed> = Vec::with_capacity(state.entries.len());
        for (id, entry) in &state.entries {
            if !entry.is_alive() {
                continue;
            }
            let name = shown_name(*id, entry);
            // Distinct values, latest first: the first is the entry's main line.
            let mut values: Vec<(Dot, Hlc, Cow<'_, Content>)> = entry
                .content
                .0
                .iter()
                .filter_map(|(d, v)| shown_content(&v.value, cancelled).map(|c| (*d, v.hlc, c)))
                .collect();
            if values.len() > 1 {
                values.sort_by_key(|v| std::cmp::Reverse((v.1, v.0)));
                let mut distinct: Vec<(Dot, Hlc, Cow<'_, Content>)> = Vec::new();
                for value in values {
                    if !distinct.iter().any(|kept| kept.2 == value.2) {
                        distinct.push(value);
                    }
                }
                values = distinct;
            }
            let mut values = values.into_iter();
            let Some((main_dot, main_hlc, main)) = values.next() else {
                continue;
            };
            let copies: Vec<(Dot, Hlc, Cow<'_, Content>)> = values.collect();
            let renamed = entry
                .name
                .0
                .values()
                .any(|n| n.value != entry.name.winner().map_or("", |w| w.1.value.as_str()));
            let conflict = !copies.is_empty() || renamed;
            for (dot, hlc, value) in copies {
                lines.push(Listed {
                    name: conflict_name(&name, &dot.writer, hlc),
                    id: *id,
                    dot,
                    content: value.into_owned(),
                    changed: hlc,
                    conflict: true,
                });
            }
            lines.push(Listed {
                name,
                id: *id,
                dot: main_dot,
                content: main.into_owned(),
                changed: main_hlc,
                conflict,
            });
        }
        // Same names next to each other, the latest write first: it keeps the name, the others
        // (entries created concurrently under one name) get conflict names.
        lines.sort_unstable_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| (b.changed, b.dot).cmp(&(a.changed, a.dot)))
        });
        let mut renamed_any = false;
        let mut i = 0;
        while i < lines.len() {
            let mut j = i + 1;
            while j < lines.len() && lines[j].name == lines[i].name {
                j += 1;
            }
            if j - i > 1 {
                renamed_any = true;
                lines[i].conflict = true;
                for line in &mut lines[i + 1..j] {
                    line.conflict = true;
                    line.name = conflict_name(&line.name, &line.dot.writer, line.changed);
                }
            }
            i = j;
        }
        if renamed_any {
            // Conflict names can still meet each other or a real name: make every name unique.
            lines.sort_by(|a, b| (&a.name, a.id, a.dot).cmp(&(&b.name, b.id, b.dot)));
            let mut taken: HashSet<String> = lines.iter().map(|l| l.name.clone()).collect();
            for k in 1..lines.len() {
                if lines[k].name == lines[k - 1].name {
                    let base = format!("{}-{}", lines[k].name, lines[k].id.fmt_short());
                    let mut candidate = base.clone();
                    let mut n = 1u32;
                    while !taken.insert(candidate.clone()) {
                        n += 1;
                        candidate = format!("{base}-{n}");
                    }
                    lines[k].name = candidate;
                }
            }
            lines.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Listing { entries: lines }
    }

    /// The line named `name`.
    pub fn get(&self, name: &str) -> Option<&Listed> {
        self.entries
            .binary_search_by(|line| line.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Whether any line is part of a conflict.
    pub fn has_conflicts(&self) -> bool {
        self.entries.iter().any(|line| line.conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_795_451_552_000), "20261123T163232Z");
        assert_eq!(utc_stamp(951_782_400_000), "20000229T000000Z");
    }
}
