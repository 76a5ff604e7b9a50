//! Mutations of valid inputs: byte-level (bit flips, interesting bytes and integers,
//! insertions, deletions, duplications, truncation, splices with other inputs, dictionary
//! tokens, decimal numbers replaced by huge ones) and JSON-aware (values replaced by huge
//! numbers, hostile strings or other types, keys removed or added, array elements duplicated,
//! subtrees spliced, deep nesting, numbers no integer type holds).

use serde_json::{Map, Value};

use crate::Rng;

/// Integers at the edges of the usual field widths, and lengths that only a liar would give.
pub const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    16,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x200,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    1 << 60,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// Decimal numbers for JSON and text fields, many beyond what `u32`/`u64`/`f64` hold.
pub const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "-0",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1152921504606846976",
    "-9223372036854775809",
    "1e999",
    "-1e999",
    "1.5",
    "1e-400",
    "123456789012345678901234567890123456789",
];

const INTERESTING_BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'/', b'.', b'"', b'\\'];

/// `len` random bytes.
pub fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// A position in `0..=len`, inside `focus` (a range of interest, e.g. a footer) most times.
fn position(rng: &mut Rng, len: usize, focus: Option<(usize, usize)>) -> usize {
    match focus {
        Some((a, b)) if a < b && b <= len && rng.chance(0.7) => rng.between(a, b),
        _ => rng.below(len + 1),
    }
}

/// Applies 1 to 8 random byte-level mutations to `data`. `dict` holds tokens worth inserting
/// (magic numbers, keywords), `others` further valid inputs to splice from, `focus` a byte
/// range most mutations should land in.
pub fn mutate_bytes(
    rng: &mut Rng,
    data: &mut Vec<u8>,
    dict: &[&[u8]],
    others: &[&[u8]],
    focus: Option<(usize, usize)>,
) {
    let rounds = 1 + rng.small_len(7).min(7);
    for _ in 0..rounds {
        let len = data.len();
        match rng.below(13) {
            // Flip a bit.
            0 if len > 0 => {
                let p = position(rng, len - 1, focus);
                data[p] ^= 1 << rng.below(8);
            }
            // An interesting or random byte.
            1 if len > 0 => {
                let p = position(rng, len - 1, focus);
                data[p] = if rng.chance(0.5) {
                    *rng.pick(INTERESTING_BYTES)
                } else {
                    rng.next_u64() as u8
                };
            }
            // Insert random bytes.
            2 => {
                let p = position(rng, len, focus);
                let n = rng.small_len(4096);
                let bytes = random_bytes(rng, n);
                data.splice(p..p, bytes);
            }
            // Delete a range.
            3 if len > 0 => {
                let p = position(rng, len - 1, focus);
                let n = rng.small_len(len - p).max(1);
                data.drain(p..p + n);
            }
            // Duplicate a range, possibly many times.
            4 if len > 0 => {
                let p = rng.below(len);
                let n = rng.small_len(len - p).max(1);
                let copies = if rng.chance(0.1) {
                    rng.between(2, 64)
                } else {
                    1
                };
                let copies = copies.min((1 << 20) / n).max(1);
                let piece: Vec<u8> = data[p..p + n].repeat(copies);
                let at = position(rng, len, focus);
                data.splice(at..at, piece);
            }
            // Truncate.
            5 if len > 0 => {
                let p = position(rng, len - 1, focus);
                data.truncate(p);
            }
            // Splice: our prefix, another input's suffix.
            6 if !others.is_empty() => {
                let other = *rng.pick(others);
                let p = position(rng, len, focus);
                let q = rng.below(other.len() + 1);
                data.truncate(p);
                data.extend_from_slice(&other[q..]);
            }
            // An interesting integer, little or big endian, 2, 4 or 8 bytes wide.
            7 if len >= 8 => {
                let width = *rng.pick(&[2usize, 4, 8]);
                let p = position(rng, len - width, focus).min(len - width);
                let v = *rng.pick(INTERESTING_U64);
                let v = if rng.chance(0.2) {
                    v.wrapping_add(rng.below(5) as u64).wrapping_sub(2)
                } else {
                    v
                };
                let (le, be) = (v.to_le_bytes(), v.to_be_bytes());
                let src = if rng.chance(0.7) {
                    &le[..width]
                } else {
                    &be[8 - width..]
                };
                data[p..p + width].copy_from_slice(src);
            }
            // Insert or overwrite with a dictionary token.
            8 if !dict.is_empty() => {
                let tok = *rng.pick(dict);
                let p = position(rng, len, focus);
                if rng.chance(0.5) || p + tok.len() > len {
                    data.splice(p..p, tok.iter().copied());
                } else {
                    data[p..p + tok.len()].copy_from_slice(tok);
                }
            }
            // Replace a run of decimal digits (a JSON number, a tar octal field) by another.
            9 if len > 0 => {
                let p = position(rng, len - 1, focus);
                if let Some(s) = (p..len).find(|&i| data[i].is_ascii_digit()) {
                    let e = (s..len).find(|&i| !data[i].is_ascii_digit()).unwrap_or(len);
                    let n = rng.pick(INTERESTING_NUMBERS).as_bytes().to_vec();
                    data.splice(s..e, n);
                }
            }
            // Copy bytes from elsewhere over a range.
            10 if len > 1 => {
                let a = rng.below(len);
                let b = position(rng, len - 1, focus);
                let n = rng.small_len((len - a).min(len - b)).max(1);
                let piece = data[a..a + n].to_vec();
                data[b..b + n].copy_from_slice(&piece);
            }
            // Swap two ranges' worth of bytes (one byte pair, cheaply).
            11 if len > 1 => {
                let (a, b) = (rng.below(len), position(rng, len - 1, focus));
                data.swap(a, b);
            }
            // Overwrite a run with one repeated byte (zeroes out lengths and checksums).
            _ if len > 0 => {
                let p = position(rng, len - 1, focus);
                let n = rng.small_len(len - p).max(1);
                let b = *rng.pick(INTERESTING_BYTES);
                data[p..p + n].fill(b);
            }
            _ => data.push(rng.next_u64() as u8),
        }
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn nth_mut<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|c| nth_mut(c, n)),
        Value::Object(o) => o.values_mut().find_map(|c| nth_mut(c, n)),
        _ => None,
    }
}

fn nth(v: &Value, n: &mut usize) -> Option<Value> {
    if *n == 0 {
        return Some(v.clone());
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter().find_map(|c| nth(c, n)),
        Value::Object(o) => o.values().find_map(|c| nth(c, n)),
        _ => None,
    }
}

fn interesting_number(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => Value::from(-(rng.below(3) as i64) - 1),
        1 => Value::from(1.5f64),
        _ => Value::from(*rng.pick(INTERESTING_U64)),
    }
}

fn interesting_string(rng: &mut Rng, strings: &[&str]) -> Value {
    let generic: &[&str] = &[
        "",
        ".",
        "..",
        "/",
        "../../../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "a\u{0}b",
        ".wh.",
        ".wh..wh..opq",
        "sha256:",
        "sha256:zz",
        "sha512:00",
        "\u{202e}\u{fffd}ü",
    ];
    let s = match rng.below(6) {
        0 => "x".repeat(rng.between(1000, 70_000)),
        1 => "a/".repeat(rng.between(100, 20_000)),
        2 => format!("sha256:{}", "0".repeat(64)),
        3 if !strings.is_empty() => rng.pick(strings).to_string(),
        _ => rng.pick(generic).to_string(),
    };
    Value::String(s)
}

fn random_value(rng: &mut Rng, strings: &[&str]) -> Value {
    match rng.below(7) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(0.5)),
        2 => Value::Array(Vec::new()),
        3 => Value::Object(Map::new()),
        4 | 5 => interesting_number(rng),
        _ => interesting_string(rng, strings),
    }
}

/// Applies 1 to 4 structural mutations to a JSON document. `strings` are values worth
/// trying (names, types, media types, digests), `keys` field names worth adding.
pub fn mutate_json(rng: &mut Rng, doc: &mut Value, strings: &[&str], keys: &[&str]) {
    let rounds = rng.between(1, 3);
    for _ in 0..rounds {
        let total = count_nodes(doc);
        let snapshot = if rng.chance(0.15) {
            let mut k = rng.below(total);
            nth(doc, &mut k)
        } else {
            None
        };
        let mut k = rng.below(total);
        let Some(node) = nth_mut(doc, &mut k) else {
            continue;
        };
        if let Some(sub) = snapshot {
            *node = sub;
            continue;
        }
        // Most mutations keep the value's type (typed parsers refuse the others at once).
        let keep_type = rng.chance(0.8);
        match node {
            Value::Number(_) if keep_type => {
                *node = Value::from(*rng.pick(INTERESTING_U64));
                continue;
            }
            Value::String(s) if keep_type => {
                if rng.chance(0.5) {
                    *node = interesting_string(rng, strings);
                } else {
                    let mut bytes = s.clone().into_bytes();
                    mutate_bytes(rng, &mut bytes, &[b"/", b"..", b".wh."], &[], None);
                    *s = String::from_utf8_lossy(&bytes).into_owned();
                }
                continue;
            }
            _ => {}
        }
        match rng.below(10) {
            0 | 1 => *node = interesting_number(rng),
            2 | 3 => *node = interesting_string(rng, strings),
            4 => *node = random_value(rng, strings),
            5 => match node {
                Value::Object(o) if !o.is_empty() => {
                    let key = o
                        .keys()
                        .nth(rng.below(o.len()))
                        .cloned()
                        .unwrap_or_default();
                    o.remove(&key);
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(rng.below(a.len()));
                }
                _ => *node = Value::Null,
            },
            6 => match node {
                Value::Array(a) if !a.is_empty() => {
                    let i = rng.below(a.len());
                    let copies = if rng.chance(0.2) {
                        rng.between(10, 3000)
                    } else {
                        1
                    };
                    let item = a[i].clone();
                    for _ in 0..copies {
                        let at = rng.below(a.len() + 1);
                        a.insert(at, item.clone());
                    }
                }
                Value::Array(a) => a.push(random_value(rng, strings)),
                _ => {}
            },
            7 => {
                if let Value::Object(o) = node {
                    let key = if !keys.is_empty() && rng.chance(0.8) {
                        rng.pick(keys).to_string()
                    } else {
                        format!("k{}", rng.below(100))
                    };
                    let v = random_value(rng, strings);
                    o.insert(key, v);
                } else if let Value::Array(a) = node {
                    if a.len() >= 2 {
                        let (i, j) = (rng.below(a.len()), rng.below(a.len()));
                        a.swap(i, j);
                    }
                }
            }
            8 => {
                if let Value::String(s) = node {
                    let mut bytes = s.clone().into_bytes();
                    mutate_bytes(rng, &mut bytes, &[b"/", b"..", b"\\u0000"], &[], None);
                    *s = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
            _ => {
                let depth = rng.between(1, 40);
                let mut v = std::mem::take(node);
                for _ in 0..depth {
                    v = if rng.chance(0.5) {
                        Value::Array(vec![v])
                    } else {
                        let mut m = Map::new();
                        m.insert("a".into(), v);
                        Value::Object(m)
                    };
                }
                *node = v;
            }
        }
    }
}

/// Serialises a JSON document with text-level mutations a `Value` cannot hold: a value
/// replaced by very deep nesting or by a number no integer or float type holds, and
/// sometimes byte-level mutations on top.
pub fn mutate_json_text(rng: &mut Rng, doc: &Value, dict: &[&[u8]]) -> Vec<u8> {
    const MARK: &str = "\u{1}FUZZ\u{1}";
    let mut doc = doc.clone();
    let mut special = None;
    if rng.chance(0.15) {
        let total = count_nodes(&doc);
        let mut k = rng.below(total);
        if let Some(node) = nth_mut(&mut doc, &mut k) {
            *node = Value::String(MARK.into());
            special = Some(if rng.chance(0.5) {
                let d = rng.between(100, 100_000);
                format!("{}{}", "[".repeat(d), "]".repeat(d))
            } else {
                rng.pick(INTERESTING_NUMBERS).to_string()
            });
        }
    }
    let mut text = if rng.chance(0.5) {
        serde_json::to_vec(&doc)
    } else {
        serde_json::to_vec_pretty(&doc)
    }
    .unwrap_or_default();
    if let Some(sp) = special {
        let quoted = serde_json::to_string(MARK).unwrap_or_default();
        let s = String::from_utf8_lossy(&text).replacen(&quoted, &sp, 1);
        text = s.into_bytes();
    }
    if rng.chance(0.1) {
        mutate_bytes(rng, &mut text, dict, &[], None);
    }
    text
}
