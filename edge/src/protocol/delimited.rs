//! Varint-length-delimited framing of the Protobuf client protocol: one
//! WebSocket binary message carries one or more messages, each preceded by
//! its length as a base-128 varint (what protobuf's `writeDelimited`
//! produces).
//!
//! Pure byte handling, no Protobuf types: [`split`] cuts a message into
//! its parts and [`join`] writes one. Splitting is total: any input yields
//! parts or a [`DelimitedError`], never a panic and never a read past the
//! input.

use bytes::{Bytes, BytesMut};

/// Why a binary message is not a sequence of delimited messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DelimitedError {
    /// The input ends inside a length prefix.
    #[error("truncated length prefix")]
    TruncatedLength,
    /// A length prefix longer than ten bytes or above `u64`.
    #[error("invalid length prefix")]
    InvalidLength,
    /// A length larger than the largest message accepted.
    #[error("message length {0} exceeds the limit")]
    TooLong(u64),
    /// The input ends before the announced length.
    #[error("truncated message")]
    TruncatedMessage,
}

/// Read a varint at the start of `input`: its value and its byte length.
fn varint(input: &[u8]) -> Result<(u64, usize), DelimitedError> {
    let mut value = 0u64;
    for (i, &b) in input.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err(DelimitedError::InvalidLength);
        }
        value |= part << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if input.len() >= 10 {
        Err(DelimitedError::InvalidLength)
    } else {
        Err(DelimitedError::TruncatedLength)
    }
}

/// Cut `input` into its delimited messages (slices of the same buffer),
/// refusing any announced length above `max`.
pub fn split(input: &Bytes, max: usize) -> Result<Vec<Bytes>, DelimitedError> {
    let mut parts = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let (len, prefix) = varint(&input[at..])?;
        if len > max as u64 {
            return Err(DelimitedError::TooLong(len));
        }
        let start = at + prefix;
        let end = start
            .checked_add(len as usize)
            .filter(|end| *end <= input.len())
            .ok_or(DelimitedError::TruncatedMessage)?;
        parts.push(input.slice(start..end));
        at = end;
    }
    Ok(parts)
}

/// Append `message` to `out` with its length prefix.
pub fn join(out: &mut BytesMut, message: &[u8]) {
    prost::encoding::encode_varint(message.len() as u64, out);
    out.extend_from_slice(message);
}

/// `message` with its length prefix, as one buffer.
pub fn delimit(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    join(&mut out, message);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_then_split_round_trips() {
        let messages: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![7; 300], vec![9; 20_000]];
        let mut out = BytesMut::new();
        for m in &messages {
            join(&mut out, m);
        }
        let parts = split(&out.freeze(), 1 << 20).unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        assert_eq!(parts, messages);
        // 300 needs a two-byte prefix, 20 000 a three-byte one.
        assert_eq!(&delimit(&[7; 300])[..2], &[0xac, 0x02]);
        assert_eq!(split(&Bytes::new(), 10).unwrap(), Vec::<Bytes>::new());
    }

    #[test]
    fn partial_and_garbage_input_is_an_error_never_a_panic() {
        // A prefix cut in the middle of its varint.
        assert_eq!(
            split(&Bytes::from_static(&[0x80]), 100),
            Err(DelimitedError::TruncatedLength)
        );
        assert_eq!(
            split(&Bytes::from_static(&[2, 1, 1, 0xff, 0xff]), 100),
            Err(DelimitedError::TruncatedLength)
        );
        // The announced length runs past the end.
        assert_eq!(
            split(&Bytes::from_static(&[5, 1, 2]), 100),
            Err(DelimitedError::TruncatedMessage)
        );
        // A length beyond the limit, whatever follows.
        assert_eq!(
            split(&Bytes::from_static(&[0x81, 0x01]), 100),
            Err(DelimitedError::TooLong(129))
        );
        // Eleven continuation bytes, and a tenth byte above 1: not a u64.
        assert_eq!(
            split(&Bytes::from_static(&[0xff; 11]), usize::MAX),
            Err(DelimitedError::InvalidLength)
        );
        let mut big = vec![0xff; 9];
        big.push(0x02);
        assert_eq!(
            split(&Bytes::from(big), usize::MAX),
            Err(DelimitedError::InvalidLength)
        );
        // The largest u64 length does not overflow the bounds check.
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(
            split(&Bytes::from(max), usize::MAX),
            Err(DelimitedError::TruncatedMessage)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_messages_round_trip(messages in proptest::collection::vec(
            proptest::collection::vec(proptest::num::u8::ANY, 0..400), 0..8)) {
            let mut out = BytesMut::new();
            for m in &messages {
                join(&mut out, m);
            }
            let parts = split(&out.freeze(), 400).unwrap();
            let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
            proptest::prop_assert_eq!(parts, messages);
        }

        #[test]
        fn any_bytes_split_without_panic_and_stay_in_bounds(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let input = Bytes::from(input);
            if let Ok(parts) = split(&input, 256) {
                let total: usize = parts.iter().map(|p| p.len()).sum();
                proptest::prop_assert!(total <= input.len());
                proptest::prop_assert!(parts.iter().all(|p| p.len() <= 256));
            }
        }
    }

    #[test]
    fn every_prefix_of_valid_input_splits_or_errs() {
        let mut out = BytesMut::new();
        join(&mut out, &[1; 200]);
        join(&mut out, &[2; 3]);
        let whole = out.freeze();
        for cut in 0..whole.len() {
            let r = split(&whole.slice(..cut), 1000);
            if let Ok(parts) = r {
                assert!(parts.len() <= 2);
            }
        }
    }
}
