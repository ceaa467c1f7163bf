//! The mapping model: `(namespace, interface) -> {application names}`.
//!
//! Merging is a set union, so it is idempotent, commutative and associative: batches can
//! be merged, retried, re-ordered and duplicated anywhere in the pipeline (filter, shim,
//! store) and every path converges on the same content. Iteration order is deterministic
//! (sorted), so batches, manifests and object specs are reproducible.

use std::collections::BTreeMap;

/// Identifies one mapping: an interface within a namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MappingKey {
    /// Kubernetes namespace the mapping lives in.
    pub namespace: String,
    /// Fully-qualified interface name, exactly as registered (case and `$` preserved).
    pub interface: String,
}

impl MappingKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, interface: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            interface: interface.into(),
        }
    }
}

impl core::fmt::Display for MappingKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.interface)
    }
}

/// A set of application names in sorted order.
///
/// Almost every interface is provided by one to three applications, so a sorted vector
/// beats a tree on memory and lookup speed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppSet(Vec<String>);

impl AppSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds `app`; returns whether it was new.
    pub fn insert(&mut self, app: &str) -> bool {
        match self.0.binary_search_by(|a| a.as_str().cmp(app)) {
            Ok(_) => false,
            Err(pos) => {
                self.0.insert(pos, app.to_owned());
                true
            }
        }
    }

    /// Whether `app` is in the set.
    pub fn contains(&self, app: &str) -> bool {
        self.0.binary_search_by(|a| a.as_str().cmp(app)).is_ok()
    }

    /// Adds every name of `other`; returns how many were new.
    pub fn union(&mut self, other: &AppSet) -> usize {
        if other.0.is_empty() {
            return 0;
        }
        if self.0.is_empty() {
            self.0 = other.0.clone();
            return other.0.len();
        }
        let before = self.0.len();
        let mut merged = Vec::with_capacity(before + other.0.len());
        let (mut a, mut b) = (self.0.drain(..).peekable(), other.0.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match x.as_str().cmp(y.as_str()) {
                    core::cmp::Ordering::Less => merged.extend(a.next()),
                    core::cmp::Ordering::Greater => merged.extend(b.next().cloned()),
                    core::cmp::Ordering::Equal => {
                        merged.extend(a.next());
                        b.next();
                    }
                },
                (Some(_), None) => merged.extend(a.by_ref()),
                (None, Some(_)) => merged.extend(b.by_ref().cloned()),
                (None, None) => break,
            }
        }
        drop(a);
        self.0 = merged;
        self.0.len() - before
    }

    /// Whether every name of `self` is in `other`.
    pub fn is_subset(&self, other: &AppSet) -> bool {
        self.0.iter().all(|a| other.contains(a))
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no names.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Names in sorted order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.0.iter().map(String::as_str)
    }

    /// Names in sorted order, as a slice.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The sorted names.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl<S: AsRef<str>> FromIterator<S> for AppSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut v: Vec<String> = iter.into_iter().map(|s| s.as_ref().to_owned()).collect();
        v.sort_unstable();
        v.dedup();
        Self(v)
    }
}

/// Mappings keyed by `(namespace, interface)`, deterministic in order. The unit the
/// pipeline moves around: a batch, a store snapshot, a lookup result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mappings(BTreeMap<MappingKey, AppSet>);

impl Mappings {
    /// No mappings.
    pub const fn new() -> Self {
        Self(BTreeMap::new())
    }

    /// Adds `app` to `key`; returns whether it was new.
    pub fn insert(&mut self, key: MappingKey, app: &str) -> bool {
        self.0.entry(key).or_default().insert(app)
    }

    /// Unions `apps` into `key`; returns how many names were new.
    pub fn insert_set(&mut self, key: MappingKey, apps: &AppSet) -> usize {
        match self.0.get_mut(&key) {
            Some(existing) => existing.union(apps),
            None => {
                let n = apps.len();
                self.0.insert(key, apps.clone());
                n
            }
        }
    }

    /// Unions every mapping of `other` into `self`; returns how many names were new.
    pub fn union(&mut self, other: &Mappings) -> usize {
        other
            .0
            .iter()
            .map(|(k, apps)| self.insert_set(k.clone(), apps))
            .sum()
    }

    /// Like [`Mappings::union`], consuming `other` to avoid copies.
    pub fn union_owned(&mut self, other: Mappings) -> usize {
        if self.0.is_empty() {
            let n = other.entries();
            *self = other;
            return n;
        }
        other
            .0
            .into_iter()
            .map(|(k, apps)| match self.0.get_mut(&k) {
                Some(existing) => existing.union(&apps),
                None => {
                    let n = apps.len();
                    self.0.insert(k, apps);
                    n
                }
            })
            .sum()
    }

    /// Whether every `(key, app)` of `self` is in `other`.
    pub fn is_subset(&self, other: &Mappings) -> bool {
        self.0
            .iter()
            .all(|(k, apps)| other.0.get(k).is_some_and(|o| apps.is_subset(o)))
    }

    /// Whether `key` holds `app`.
    pub fn contains(&self, key: &MappingKey, app: &str) -> bool {
        self.0.get(key).is_some_and(|a| a.contains(app))
    }

    /// The applications of `key`.
    pub fn get(&self, key: &MappingKey) -> Option<&AppSet> {
        self.0.get(key)
    }

    /// Removes and returns the first key in order, with its applications.
    pub fn pop_first(&mut self) -> Option<(MappingKey, AppSet)> {
        self.0.pop_first()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Number of `(key, app)` pairs.
    pub fn entries(&self) -> usize {
        self.0.values().map(AppSet::len).sum()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keys and applications, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&MappingKey, &AppSet)> + '_ {
        self.0.iter()
    }
}

impl IntoIterator for Mappings {
    type Item = (MappingKey, AppSet);
    type IntoIter = std::collections::btree_map::IntoIter<MappingKey, AppSet>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<(MappingKey, AppSet)> for Mappings {
    fn from_iter<I: IntoIterator<Item = (MappingKey, AppSet)>>(iter: I) -> Self {
        let mut m = Mappings::new();
        for (k, apps) in iter {
            m.insert_set(k, &apps);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mappings() -> impl Strategy<Value = Mappings> {
        proptest::collection::vec(
            (
                0u8..3,
                0u8..5,
                proptest::collection::vec("[a-d]{1,2}", 0..4),
            ),
            0..12,
        )
        .prop_map(|entries| {
            entries
                .into_iter()
                .map(|(ns, i, apps)| {
                    (
                        MappingKey::new(format!("ns{ns}"), format!("com.example.I{i}")),
                        apps.into_iter().collect::<AppSet>(),
                    )
                })
                .collect()
        })
    }

    fn union(a: &Mappings, b: &Mappings) -> Mappings {
        let mut out = a.clone();
        out.union(b);
        out
    }

    proptest! {
        #[test]
        fn union_is_idempotent(a in mappings()) {
            prop_assert_eq!(union(&a, &a), a);
        }

        #[test]
        fn union_is_commutative(a in mappings(), b in mappings()) {
            prop_assert_eq!(union(&a, &b), union(&b, &a));
        }

        #[test]
        fn union_is_associative(a in mappings(), b in mappings(), c in mappings()) {
            prop_assert_eq!(union(&union(&a, &b), &c), union(&a, &union(&b, &c)));
        }

        #[test]
        fn owned_union_equals_borrowed_union(a in mappings(), b in mappings()) {
            let mut owned = a.clone();
            let new_owned = owned.union_owned(b.clone());
            let mut borrowed = a.clone();
            let new_borrowed = borrowed.union(&b);
            prop_assert_eq!(&owned, &borrowed);
            prop_assert_eq!(new_owned, new_borrowed);
            prop_assert_eq!(owned.entries(), a.entries() + new_owned);
        }

        #[test]
        fn both_operands_are_subsets_of_the_union(a in mappings(), b in mappings()) {
            let u = union(&a, &b);
            prop_assert!(a.is_subset(&u) && b.is_subset(&u));
        }

        #[test]
        fn app_sets_stay_sorted_and_unique(names in proptest::collection::vec("[a-f]{0,3}", 0..20)) {
            let mut set = AppSet::new();
            for n in &names { set.insert(n); }
            let mut expected = names.clone();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(set.as_slice(), &expected[..]);
        }
    }
}
