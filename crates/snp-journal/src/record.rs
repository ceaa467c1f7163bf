//! The on-disk format: segment files of checksummed records.
//!
//! ```text
//! segment := "SNPJRNL" version:u8  record*
//! record  := len:u32le crc:u32le payload[len]          crc = CRC-32 of len and payload
//! payload := count:u32le entry{count}
//! entry   := ns_len:u16le ns iface_len:u16le iface app_len:u16le app   (UTF-8)
//! ```
//!
//! A record is written with one `write` and made durable by the group's `fdatasync`. A
//! crash can leave the last record short, or followed by garbage (a file extended but not
//! yet written reads as zeros). Reading stops at the first record that is short, too
//! long, fails its checksum or does not decode: that is the torn tail, and it is ignored.
//! Everything before it was written whole. No acknowledged record can be in the tail:
//! acknowledgement waits for the `fdatasync` of every byte before it.

use crate::Entry;

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"SNPJRNL\x01";

/// Bytes of a record's frame before its payload.
pub const FRAME: usize = 8;

/// Longest payload accepted on reading (a larger length is corruption, not a record).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Longest field of an entry (the u16 length prefix).
pub const MAX_FIELD: usize = u16::MAX as usize;

/// Encoded size of one entry.
pub fn entry_len(e: &Entry) -> usize {
    6 + e.namespace.len() + e.interface.len() + e.application.len()
}

/// Appends one record holding `entries` to `out`. Fields longer than [`MAX_FIELD`] must
/// have been refused before.
pub fn encode<'a>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    out.extend_from_slice(&[0; 4]);
    let mut count: u32 = 0;
    for (ns, iface, app) in entries {
        for field in [ns, iface, app] {
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&field.as_bytes()[..usize::from(len)]);
        }
        count += 1;
    }
    let payload = start + FRAME;
    out[payload..payload + 4].copy_from_slice(&count.to_le_bytes());
    let len = u32::try_from(out.len() - payload).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..start + 4]);
    crc.update(&out[payload..]);
    out[start + 4..start + 8].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// Why reading a segment stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Torn {
    /// The file is shorter than its header, or the header is not ours.
    Header,
    /// Fewer bytes than a frame, or than the frame's length says.
    Short,
    /// A length above [`MAX_PAYLOAD`].
    Length(u32),
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the payload does not decode.
    Payload,
}

impl std::fmt::Display for Torn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Torn::Header => f.write_str("missing or foreign header"),
            Torn::Short => f.write_str("record cut short"),
            Torn::Length(n) => write!(f, "implausible record length {n}"),
            Torn::Checksum => f.write_str("checksum mismatch"),
            Torn::Payload => f.write_str("undecodable payload"),
        }
    }
}

/// What reading one segment found.
#[derive(Debug, Default)]
pub struct Read {
    /// Whole records read.
    pub records: usize,
    /// Their entries, in order.
    pub entries: Vec<Entry>,
    /// Bytes of whole records, header included: where the torn tail starts.
    pub valid_len: usize,
    /// Why reading stopped early, if it did.
    pub torn: Option<Torn>,
}

/// Reads a whole segment's bytes.
pub fn read_segment(bytes: &[u8]) -> Read {
    let mut read = Read::default();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // An empty file is a segment created but never written: nothing to report.
        if !bytes.is_empty() {
            read.torn = Some(Torn::Header);
        }
        return read;
    }
    let mut at = MAGIC.len();
    read.valid_len = at;
    while at < bytes.len() {
        match read_record(&bytes[at..], &mut read.entries) {
            Ok(n) => {
                at += n;
                read.records += 1;
                read.valid_len = at;
            }
            Err(t) => {
                read.torn = Some(t);
                break;
            }
        }
    }
    read
}

fn read_record(b: &[u8], out: &mut Vec<Entry>) -> Result<usize, Torn> {
    if b.len() < FRAME {
        return Err(Torn::Short);
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if len as usize > MAX_PAYLOAD {
        return Err(Torn::Length(len));
    }
    let end = FRAME + len as usize;
    if b.len() < end {
        return Err(Torn::Short);
    }
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..4]);
    h.update(&b[FRAME..end]);
    if h.finalize() != crc {
        return Err(Torn::Checksum);
    }
    let before = out.len();
    if decode_payload(&b[FRAME..end], out).is_none() {
        out.truncate(before);
        return Err(Torn::Payload);
    }
    Ok(end)
}

fn decode_payload(p: &[u8], out: &mut Vec<Entry>) -> Option<()> {
    let mut r = Reader(p);
    let count = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
    for _ in 0..count {
        let namespace = r.field()?;
        let interface = r.field()?;
        let application = r.field()?;
        out.push(Entry {
            namespace,
            interface,
            application,
        });
    }
    r.0.is_empty().then_some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn field(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(ns: &str, i: &str, a: &str) -> Entry {
        Entry::new(ns, i, a)
    }

    fn segment(records: &[Vec<Entry>]) -> (Vec<u8>, Vec<usize>) {
        let mut b = MAGIC.to_vec();
        let mut ends = Vec::new();
        for r in records {
            encode(
                &mut b,
                r.iter().map(|e| {
                    (
                        e.namespace.as_str(),
                        e.interface.as_str(),
                        e.application.as_str(),
                    )
                }),
            );
            ends.push(b.len());
        }
        (b, ends)
    }

    #[test]
    fn records_round_trip() {
        let recs = vec![
            vec![
                e("default", "com.Foo", "foo"),
                e("default", "com.Bar", "foo"),
            ],
            vec![e("ns-ü", "", "app")],
        ];
        let (b, ends) = segment(&recs);
        let r = read_segment(&b);
        assert_eq!(r.torn, None);
        assert_eq!(r.records, 2);
        assert_eq!(r.valid_len, *ends.last().unwrap());
        assert_eq!(r.entries, recs.concat());
    }

    /// The crash test of the format: the file cut at every byte offset of the last record
    /// (and garbage or zeros after a whole one) never loses an earlier record, never yields
    /// a wrong one, and is always reported as a torn tail, not an error.
    #[test]
    fn a_tail_cut_at_every_offset_keeps_every_whole_record() {
        let recs = vec![
            vec![e("default", "org.example.Greeter", "greeter")],
            vec![
                e("team-a", "org.example.Hello", "hello"),
                e("team-a", "org.example.World", "hello"),
            ],
            vec![e("team-b", "org.example.Last", "last-app")],
        ];
        let (b, ends) = segment(&recs);
        let before_last = ends[1];
        for cut in before_last..b.len() {
            let r = read_segment(&b[..cut]);
            assert_eq!(r.entries, recs[..2].concat(), "cut at {cut}");
            assert_eq!(r.valid_len, before_last, "cut at {cut}");
            if cut == before_last {
                assert_eq!(r.torn, None);
            } else {
                assert_eq!(r.torn, Some(Torn::Short), "cut at {cut}");
            }
        }
        // The whole file reads whole.
        assert_eq!(read_segment(&b).entries, recs.concat());
        // A header cut short: nothing, torn.
        for cut in 1..MAGIC.len() {
            let r = read_segment(&b[..cut]);
            assert!(r.entries.is_empty());
            assert_eq!(r.torn, Some(Torn::Header));
        }
        // Zeros after the last whole record (a file extended but never written).
        let mut z = b.clone();
        z.extend_from_slice(&[0; 64]);
        let r = read_segment(&z);
        assert_eq!(r.entries, recs.concat());
        assert_eq!(r.torn, Some(Torn::Checksum));
    }

    #[test]
    fn any_flipped_bit_in_the_last_record_drops_only_that_record() {
        let recs = vec![
            vec![e("default", "a.A", "x")],
            vec![e("default", "b.B", "y")],
        ];
        let (b, ends) = segment(&recs);
        for at in ends[0]..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[at] ^= 1 << bit;
                let r = read_segment(&c);
                assert_eq!(r.entries, recs[0], "byte {at} bit {bit}");
                assert!(r.torn.is_some());
            }
        }
    }

    #[test]
    fn an_implausible_length_is_a_torn_tail() {
        let (mut b, _) = segment(&[vec![e("a", "b", "c")]]);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        let r = read_segment(&b);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.torn, Some(Torn::Length(u32::MAX)));
    }
}
