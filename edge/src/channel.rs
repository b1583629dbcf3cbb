//! Channel names and stream positions as the edge handles them. A
//! [`ChannelName`] is validated at construction with the node's rules, so a
//! name that would be rejected upstream never reaches the hub or the link.

use std::fmt;
use std::sync::Arc;

/// Longest channel name in bytes (the node's default `max_channel_len`).
pub const MAX_CHANNEL_LEN: usize = 255;

/// A valid channel name: `name` or `namespace:name`, shared cheaply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Empty string.
    #[error("channel name is empty")]
    Empty,
    /// Longer than [`MAX_CHANNEL_LEN`].
    #[error("channel name longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// Bad character or shape.
    #[error(
        "channel name has a character outside A-Z a-z 0-9 _ - . : @ / = # $, or is not name / namespace:name"
    )]
    Invalid,
}

impl ChannelName {
    /// Validate and wrap.
    pub fn new(s: &str) -> Result<Self, ChannelError> {
        if s.is_empty() {
            return Err(ChannelError::Empty);
        }
        if s.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/=#$".contains(&b))
        {
            return Err(ChannelError::Invalid);
        }
        let mut parts = s.split(':');
        let first = parts.next().unwrap_or_default();
        match (parts.next(), parts.next()) {
            (None, _) => {}
            (Some(name), None) if !first.is_empty() && !name.is_empty() => {}
            _ => return Err(ChannelError::Invalid),
        }
        Ok(Self(Arc::from(s)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A channel's epoch: changes only when its history was lost or reset. The
/// empty epoch belongs to a channel that has never had a publication, and is
/// continuous with offset 0 of any epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Epoch(pub Arc<str>);

impl Epoch {
    /// Wrap a string.
    pub fn new(s: &str) -> Self {
        Self(Arc::from(s))
    }

    /// The epoch string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The channel had no publication yet when this epoch was seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A publication's place in its channel: +1 per publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

/// A resume position: the last publication a reader has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// The channel's epoch.
    pub epoch: Epoch,
    /// The last offset delivered.
    pub offset: Offset,
}

impl Position {
    /// Whether a reader at `self` can continue from the channel's current
    /// epoch `current` without a gap by offsets alone: same epoch, or a
    /// reader that saw nothing yet (empty epoch at offset 0).
    pub fn continues_in(&self, current: &Epoch) -> bool {
        self.epoch == *current || (self.epoch.is_empty() && self.offset.0 == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(ChannelName::new("chat:room-7").is_ok());
        assert!(ChannelName::new("news").is_ok());
        assert_eq!(ChannelName::new(""), Err(ChannelError::Empty));
        assert_eq!(ChannelName::new("a:b:c"), Err(ChannelError::Invalid));
        assert_eq!(ChannelName::new(":b"), Err(ChannelError::Invalid));
        assert_eq!(ChannelName::new("a b"), Err(ChannelError::Invalid));
        assert_eq!(
            ChannelName::new(&"x".repeat(256)),
            Err(ChannelError::TooLong)
        );
    }
}
