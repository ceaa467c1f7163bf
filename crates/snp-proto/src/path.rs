//! Which gRPC method a `:path` names, the same way in the filter and in the shim.
//!
//! Envoy's `path` route match and tonic's router both ignore the query string, so
//! `/svc/method?x=1` (or a bare trailing `?`, or a fragment) reaches the method. A filter
//! that compared the whole `:path` would let such a call through uninspected.
//! So a path is first cut at `?` or `#`; what is left must equal a known
//! path byte for byte. Anything that only *resembles* a known path (percent-encoded
//! characters, doubled or trailing slashes, `.` segments, backslashes, another case) is a
//! [`PathMatch::Variant`]: neither Envoy's default configuration nor tonic routes it to the
//! method today, but a proxy with path normalisation switched on would, so both doors
//! refuse it rather than guess.

/// What a `:path` is, relative to a set of known method paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMatch<'a> {
    /// The known path itself, possibly with a query string or a fragment.
    Exact(&'a str),
    /// Not the known path, but a spelling of it that some proxy could route there.
    Variant(&'a str),
    /// Unrelated.
    Other,
}

/// `path` without its query string and fragment.
pub fn without_query(path: &[u8]) -> &[u8] {
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    &path[..end]
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The loosest reading of a path: percent-decoded (repeatedly, so `%252E` counts too),
/// backslashes as slashes, empty and `.` segments dropped, `;` parameters dropped,
/// lower case. Two paths with the same loose form are "the same method" to some proxy.
fn loose(path: &[u8]) -> Vec<u8> {
    let mut cur = without_query(path).to_vec();
    // Bounded: each round shortens a path that still has an escape.
    for _ in 0..4 {
        let mut out = Vec::with_capacity(cur.len());
        let mut i = 0;
        let mut changed = false;
        while i < cur.len() {
            if cur[i] == b'%' && i + 2 < cur.len() {
                if let (Some(h), Some(l)) = (hex(cur[i + 1]), hex(cur[i + 2])) {
                    out.push(h * 16 + l);
                    i += 3;
                    changed = true;
                    continue;
                }
            }
            out.push(cur[i]);
            i += 1;
        }
        cur = without_query(&out).to_vec();
        if !changed {
            break;
        }
    }
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for seg in cur.split(|&b| b == b'/' || b == b'\\') {
        let seg = seg.split(|&b| b == b';').next().unwrap_or_default();
        if seg.is_empty() || seg == b"." {
            continue;
        }
        segments.push(seg.to_ascii_lowercase());
    }
    let mut out = Vec::with_capacity(cur.len());
    for seg in segments {
        out.push(b'/');
        out.extend_from_slice(&seg);
    }
    out
}

/// Classifies `path` against `known` method paths (each in canonical form).
pub fn classify<'a>(
    path: &[u8],
    known: impl IntoIterator<Item = &'a str> + Clone,
) -> PathMatch<'a> {
    let bare = without_query(path);
    if let Some(k) = known.clone().into_iter().find(|k| k.as_bytes() == bare) {
        return PathMatch::Exact(k);
    }
    let l = loose(path);
    match known.into_iter().find(|k| loose(k.as_bytes()) == l) {
        Some(k) => PathMatch::Variant(k),
        None => PathMatch::Other,
    }
}

/// The message both doors answer a [`PathMatch::Variant`] with (`INVALID_ARGUMENT`).
pub fn variant_message(path: &[u8], canonical: &str) -> String {
    let shown: String = String::from_utf8_lossy(&path[..path.len().min(200)])
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    format!(
        "path {shown} is not the exact registration path {canonical}; send the method's path as is"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PATH_FLAVOUR_A, PATH_FLAVOUR_B, PATH_PUSH_MAPPINGS};

    const KNOWN: [&str; 2] = [PATH_FLAVOUR_A, PATH_FLAVOUR_B];

    fn c(p: &str) -> PathMatch<'static> {
        classify(p.as_bytes(), KNOWN)
    }

    #[test]
    fn query_strings_and_fragments_are_the_method() {
        for suffix in ["", "?", "?x=1", "?x=1&y", "#", "#frag", "?a#b"] {
            assert_eq!(
                c(&format!("{PATH_FLAVOUR_A}{suffix}")),
                PathMatch::Exact(PATH_FLAVOUR_A),
                "{suffix}"
            );
            assert_eq!(
                c(&format!("{PATH_FLAVOUR_B}{suffix}")),
                PathMatch::Exact(PATH_FLAVOUR_B)
            );
        }
    }

    #[test]
    fn spellings_of_the_method_are_variants() {
        let a = PATH_FLAVOUR_A;
        let variants = [
            a.replacen("/dubbo", "//dubbo", 1),
            a.replacen("/register", "//register", 1),
            format!("{a}/"),
            format!("{a}/?x=1"),
            a.replacen("/register", "/./register", 1),
            a.replacen('.', "%2E", 1),
            a.replacen('.', "%2e", 1),
            a.replacen('.', "%252E", 1),
            a.replacen("/register", "%2Fregister", 1),
            a.replacen("/register", "\\register", 1),
            a.replacen("register", "Register", 1),
            a.to_ascii_uppercase(),
            a.replacen('S', "%53", 1),
            format!("{a};x=1"),
            format!("{a}%3Fx=1"),
        ];
        for v in &variants {
            assert_eq!(c(v), PathMatch::Variant(PATH_FLAVOUR_A), "{v}");
        }
    }

    #[test]
    fn other_paths_are_other() {
        for p in [
            "/",
            "",
            PATH_PUSH_MAPPINGS,
            "/grpc.health.v1.Health/Check",
            "/dubbo.networking.v1alpha1.ServiceNameMappingService/getServiceAppMapping",
            "/v1alpha1.ServiceNameMappingService",
            "%",
            "%%%",
            "/%zz",
        ] {
            assert_eq!(c(p), PathMatch::Other, "{p}");
        }
    }

    #[test]
    fn messages_are_printable() {
        let m = variant_message(b"/a\xff\n", PATH_FLAVOUR_A);
        assert!(m.is_ascii() && !m.contains('\n'), "{m}");
    }
}
