//! What a JSON payload's bytes become on the wire: compact JSON, with no
//! whitespace outside strings.
//!
//! Clients read JSON frames delimited by newlines (one JSON object per
//! line in the Centrifugo JSON protocol, one `data:` line per SSE event),
//! and JSON payloads are embedded in those frames as they are. A payload
//! that is valid JSON can still hold raw CR and LF between its tokens
//! (`{"n":\n2}`); copied verbatim it would split a frame in two, and every
//! client reading that frame (live or recovering across it) would fail.
//! Inside strings JSON forbids raw control characters, so once whitespace
//! between tokens is gone, no CR or LF is left anywhere. Everything else
//! (numbers, string escapes, key order) stays byte for byte.

use std::borrow::Cow;

/// `json` (which must already be valid JSON) without any whitespace
/// between its tokens; borrowed when there was none.
pub fn compact_json(json: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = first_outside_string(json) else {
        return Cow::Borrowed(json);
    };
    let mut out = Vec::with_capacity(json.len());
    out.extend_from_slice(&json[..first]);
    let mut in_string = false;
    let mut escaped = false;
    for &b in &json[first..] {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !is_whitespace(b) {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// Whether `bytes` hold a CR or an LF anywhere (the only bytes that can
/// break a line-delimited frame).
pub fn has_line_break(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b == b'\n' || b == b'\r')
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Index of the first whitespace byte outside a string, if any.
fn first_outside_string(json: &[u8]) -> Option<usize> {
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_whitespace(b) {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_between_tokens_goes_and_strings_stay() {
        let raw = b"{ \"n\" :\r\n 2,\t\"s\": \"a b\\\" \\n c\" ,\"x\":[1 , 2]}\n";
        assert_eq!(
            &*compact_json(raw),
            b"{\"n\":2,\"s\":\"a b\\\" \\n c\",\"x\":[1,2]}"
        );
        assert!(matches!(compact_json(b"{\"a\":\"b c\"}"), Cow::Borrowed(_)));
        assert_eq!(&*compact_json(b" 1.50e3 "), b"1.50e3");
    }
}
