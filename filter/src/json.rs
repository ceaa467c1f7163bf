//! A small JSON reader for the plugin configuration.
//!
//! serde_json doubles the size of the `.wasm` (about 60 KiB of parser, float formatting and
//! derive code for one small document read once), so the filter reads its configuration
//! with this: RFC 8259 values, UTF-8 and `\u` escapes (with surrogate pairs), and numbers
//! kept as text so that integers are exact and floats need no float parser.

/// A JSON value. Object members keep their order; duplicates are rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// A non-negative integer, if this is one (no fraction, no exponent).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                n.parse().ok()
            }
            _ => None,
        }
    }

    /// A number in `[0, 1]` with at most 9 decimals (enough for a jitter fraction).
    pub fn as_unit_fraction(&self) -> Option<f64> {
        let Json::Number(n) = self else { return None };
        let (int, frac) = n.split_once('.').unwrap_or((n.as_str(), ""));
        if int.is_empty()
            || frac.len() > 9
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let int: u64 = int.parse().ok()?;
        let scale = 10u64.pow(frac.len() as u32);
        let frac: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        let v = int as f64 + frac as f64 / scale as f64;
        (v <= 1.0).then_some(v)
    }
}

/// Where and why parsing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset.
    pub at: usize,
    /// What was expected.
    pub msg: &'static str,
}

impl core::fmt::Display for JsonError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "JSON syntax error at byte {}: expected {}",
            self.at, self.msg
        )
    }
}

/// Nesting deeper than this is refused (no recursion blow-up on hostile input).
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(bytes: &[u8]) -> Result<Json, JsonError> {
    let mut p = Parser { b: bytes, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return p.fail("end of input");
    }
    Ok(v)
}

impl Parser<'_> {
    fn fail<T>(&self, msg: &'static str) -> Result<T, JsonError> {
        Err(JsonError { at: self.i, msg })
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &'static [u8], v: Json) -> Result<Json, JsonError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(v)
        } else {
            self.fail("a value")
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > MAX_DEPTH {
            return self.fail("less nesting");
        }
        self.ws();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.fail("a value"),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.i += 1;
        let mut members: Vec<(String, Json)> = Vec::new();
        self.ws();
        if self.eat(b'}') {
            return Ok(Json::Object(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return self.fail("a member name");
            }
            let at = self.i;
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(JsonError {
                    at,
                    msg: "no duplicate member names",
                });
            }
            self.ws();
            if !self.eat(b':') {
                return self.fail("':'");
            }
            let v = self.value(depth + 1)?;
            members.push((key, v));
            self.ws();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b'}') {
                return Ok(Json::Object(members));
            }
            return self.fail("',' or '}'");
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat(b']') {
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b']') {
                return Ok(Json::Array(items));
            }
            return self.fail("',' or ']'");
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.i;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.fail("a digit"),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return self.fail("a digit after '.'");
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return self.fail("an exponent");
            }
        }
        let text = self.b.get(start..self.i).unwrap_or_default();
        Ok(Json::Number(String::from_utf8_lossy(text).into_owned()))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return self.fail("four hex digits"),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return self.fail("a closing '\"'");
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return self.fail("an escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                if !(self.eat(b'\\') && self.eat(b'u')) {
                                    return self.fail("a low surrogate");
                                }
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return self.fail("a low surrogate");
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            match char::from_u32(code) {
                                Some(ch) => ch,
                                None => return self.fail("a valid code point"),
                            }
                        }
                        _ => return self.fail("a valid escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return self.fail("no control characters in strings"),
                _ => out.push(c),
            }
        }
        match String::from_utf8(out) {
            Ok(s) => Ok(s),
            Err(_) => self.fail("UTF-8"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values() {
        assert_eq!(parse(b" null ").unwrap(), Json::Null);
        assert_eq!(
            parse(b"[true,false]").unwrap(),
            Json::Array(vec![Json::Bool(true), Json::Bool(false)])
        );
        assert_eq!(
            parse(br#"{"a": -1.5e3, "b": "x\"\u00e9\ud83d\ude00\n"}"#).unwrap(),
            Json::Object(vec![
                ("a".into(), Json::Number("-1.5e3".into())),
                ("b".into(), Json::String("x\"é😀\n".into())),
            ])
        );
        assert_eq!(parse(b"{}").unwrap(), Json::Object(vec![]));
        assert_eq!(parse("\"é\"".as_bytes()).unwrap(), Json::String("é".into()));
    }

    #[test]
    fn errors() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\"}",
            b"{\"a\":1,}",
            b"[1 2]",
            b"01",
            b"1.",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"a\nb\"",
            b"tru",
            b"{\"a\":1,\"a\":2}",
            b"\"\xff\"",
            b"1 2",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(Json::Number("65536".into()).as_u64(), Some(65536));
        assert_eq!(Json::Number("-1".into()).as_u64(), None);
        assert_eq!(Json::Number("1.5".into()).as_u64(), None);
        assert_eq!(
            Json::Number("99999999999999999999999".into()).as_u64(),
            None
        );
        assert_eq!(Json::Number("0.2".into()).as_unit_fraction(), Some(0.2));
        assert_eq!(Json::Number("1".into()).as_unit_fraction(), Some(1.0));
        assert_eq!(Json::Number("0".into()).as_unit_fraction(), Some(0.0));
        assert_eq!(Json::Number("1.5".into()).as_unit_fraction(), None);
        assert_eq!(Json::Number("2e-1".into()).as_unit_fraction(), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&b);
        }
    }
}
